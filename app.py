"""gradviz dashboard: the frame (page config, shared sidebar, navigation). Run: streamlit run app.py"""

import streamlit as st

st.set_page_config(page_title="gradviz — gradient-based uncertainty", page_icon=":material/insights:", layout="wide")

from gradviz.ui.sidebar import frame, render_sidebar  # noqa: E402  (after set_page_config)

PAGES = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/compare.py", title="Compare distributions", icon=":material/bar_chart:"),
    st.Page("pages/compare_models.py", title="Compare models", icon=":material/compare:"),
    st.Page("pages/inspect.py", title="Inspect a sample", icon=":material/search:"),
    st.Page("pages/layers.py", title="Layer profiles", icon=":material/layers:"),
    st.Page("pages/meta.py", title="Meta classifier", icon=":material/calculate:"),
    st.Page("pages/corruptions.py", title="Corruption lab", icon=":material/blur_on:"),
    st.Page("pages/learn.py", title="Learn", icon=":material/school:"),
]

nav = st.navigation(PAGES)
st.session_state["gv_framed"] = True
render_sidebar()
with frame():
    nav.run()
