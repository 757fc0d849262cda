"""gradviz: gradient-based uncertainty for image classifiers (library behind the dashboard).

Usable without Streamlit::

    from gradviz.models import load_model
    from gradviz.data import load_dataset
    from gradviz.scoring import RunConfig, run   # run(RunConfig(...)) -> scores + metrics
"""

from gradviz.errors import GradvizError

__version__ = "0.1.0"
__all__ = ["GradvizError", "__version__"]
