"""Teaching helpers: SymPy helpers (:mod:`.symbolic`), readers' answer checkers (:mod:`.checkers`), and the
widgets (:mod:`.widgets`). Import the modules themselves: this package imports none of them, so that
importing one does not load SymPy or matplotlib for the others.
"""
