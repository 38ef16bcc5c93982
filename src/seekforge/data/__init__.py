"""Data stage: read raw text, clean/filter/deduplicate it (``data prepare``), tokenize it.

Submodules are imported on use (``from seekforge.data.readers import iter_documents``) so that
``import seekforge.data`` stays cheap.
"""
