"""gradviz dashboard: the frame (page config, shared sidebar, navigation). Run: streamlit run app.py

The pages are listed once, in gradviz/ui/pages.py (PAGES): add a page there, not here."""

import streamlit as st

st.set_page_config(page_title="gradviz — gradient-based uncertainty", page_icon=":material/insights:", layout="wide")

from gradviz.config import settings  # noqa: E402  (after set_page_config)
from gradviz.engine.kernels import build_in_background  # noqa: E402
from gradviz.errors import GradvizError  # noqa: E402
from gradviz.ui.cache import start_warm_up  # noqa: E402
from gradviz.ui.pages import navigation  # noqa: E402
from gradviz.ui.server import apply_torch_threads  # noqa: E402
from gradviz.ui.sidebar import frame, render_sidebar  # noqa: E402

try:
    settings()  # a bad GRADVIZ_* value is the server's configuration error: shown, and nothing runs
except GradvizError as exc:
    st.error(f"Server configuration: {exc}")
    st.stop()
build_in_background()  # the statistics kernel compiles (or loads from its cache) while the first page loads
apply_torch_threads()  # 1 unless GRADVIZ_TORCH_THREADS or OMP_NUM_THREADS says otherwise (fast one-image passes)
start_warm_up()  # the default results of the bundled models, in the background from the first request on

nav = st.navigation(navigation())
st.session_state["gv_framed"] = True
render_sidebar()
with frame():
    nav.run()
