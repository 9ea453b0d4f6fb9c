"""Model fields -> ``.proto`` text -> compiled Python modules."""
