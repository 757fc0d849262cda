"""gradviz dashboard: the frame (page config, shared sidebar, navigation). Run: streamlit run app.py"""

import streamlit as st

st.set_page_config(page_title="gradviz — gradient-based uncertainty", page_icon="🧭", layout="wide")

from gradviz.ui.sidebar import render_sidebar  # noqa: E402  (after set_page_config)

PAGES = [
    st.Page("pages/home.py", title="Home", icon="🏠", default=True),
    st.Page("pages/compare.py", title="Compare distributions", icon="📊"),
    st.Page("pages/inspect.py", title="Inspect a sample", icon="🔍"),
    st.Page("pages/layers.py", title="Layer profiles", icon="🧱"),
    st.Page("pages/meta.py", title="Meta classifier", icon="🧮"),
    st.Page("pages/corruptions.py", title="Corruption lab", icon="🌫️"),
    st.Page("pages/learn.py", title="Learn", icon="🎓"),
]

nav = st.navigation(PAGES)
render_sidebar()
nav.run()
