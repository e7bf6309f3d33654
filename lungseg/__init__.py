"""lungseg: the plumbing behind the notebooks that no lesson teaches (data checks, download and safe
extraction, synthetic phantoms, the papermill runner, building ``lungseg_utils.py``).

The lessons are the notebooks; what they share is ``lungseg_utils.py``, made from their ``#@save`` cells.
"""
