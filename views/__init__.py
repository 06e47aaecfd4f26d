"""The UI layer's helpers, next to the pages that use them (the core ``tl_dashboard`` never imports this).

- :mod:`views.present`: streamlit-free run presentation (progress, status lines, table rows, titles).
- :mod:`views.widgets`: the Streamlit pieces several pages share.
"""
