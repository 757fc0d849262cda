"""Score the bundled model on in-distribution and OOD images, then draw the dashboard's figures, without Streamlit.

Run it whole from the checkout (after `bash scripts/setup_env.sh`, which installs gradviz into .venv):

    .venv/bin/python examples/score_and_plot.py --limit 300 --out example-figures

or cell by cell (`# %%`) in an editor that runs cells (VS Code, PyCharm, Spyder, Jupytext). Each figure is written
as a self-contained HTML file (plotly.js inlined: it opens offline).
"""

# %% Settings: the bundled CNN, MNIST digits as ID, letters and uniform noise as OOD, three methods
import argparse
from pathlib import Path

from gradviz.plots import figures as plots
from gradviz.scoring import RunConfig, run

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--limit", type=int, default=300, help="images per set (default 300)")
parser.add_argument("--out", type=Path, default=Path("example-figures"), help="folder for the HTML figures")
args, _ = parser.parse_known_args()  # known args only: a notebook kernel passes its own

config = RunConfig(model="mnist-cnn", id="mnist", ood=["letters", "noise-uniform"],
                   methods=["msp", "energy", "gradnorm"], limit=args.limit, seed=0)

# %% Score: one row per image (dataset, role, label, prediction, one column per method; higher = more uncertain)
result = run(config)
scores, metrics = result.scores, result.metrics
print(scores.head())
print(metrics[["ood_dataset", "method", "auroc", "fpr95"]].to_string(index=False))

# %% Figures: the same builders the dashboard's pages call (data in, plotly Figure out)
methods = config.method_names()
figures = {
    "histogram_gradnorm": plots.score_histogram(scores, "gradnorm"),
    "roc_letters": plots.roc_figure(scores, methods, "letters", metrics=metrics),
    "roc_noise": plots.roc_figure(scores, methods, "noise-uniform", metrics=metrics),
    "auroc_bars": plots.metric_bars(metrics, "auroc"),
}

# %% Write each figure as an HTML file
args.out.mkdir(parents=True, exist_ok=True)
for name, fig in figures.items():
    (args.out / f"{name}.html").write_text(plots.to_html(fig), encoding="utf-8")
print(f"wrote {len(figures)} figures to {args.out}/")
