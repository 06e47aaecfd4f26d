"""The UI layer's helpers, next to the pages that use them (the core ``tl_dashboard`` never imports this).

- :mod:`views.present`: streamlit-free run presentation (progress, status lines, table rows, titles).
- :mod:`views.workspace`: which workspace a session is in and which choices the store keeps for it.
- :mod:`views.widgets`: the Streamlit pieces several pages share.
"""
