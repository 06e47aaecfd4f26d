"""TL Dashboard: transfer learning on image folders with timm backbones.

The core (this package) is plain Python and never imports streamlit; the dashboard in ``app.py`` and
``pages/`` and the ``tl-dashboard`` command are thin layers over it. See README.md.
"""

__version__ = "0.1.0"
