"""Learn: every registered method explained by family (intuition, formula, how to read its plots, what it does on
the bundled model), a guided tour, honest notes and the papers. Everything comes from the method registry."""

import pandas as pd
import streamlit as st

from gradviz.explain.scores import explainability
from gradviz.methods import FAMILIES, list_methods, methods_by_family
from gradviz.trust.terms import TRUST_TERMS
from gradviz.ui.pages import page
from gradviz.ui.sidebar import ensure_frame

ensure_frame()

st.title("Learn: gradient-based uncertainty")
st.markdown(
    "Every method in gradviz turns one image into an **uncertainty score — higher = more uncertain** "
    "(more likely out-of-distribution or misclassified). Some read only the network's outputs, some its "
    "penultimate features; the gradient methods backpropagate a loss and read the *size and shape* of the "
    "gradient: an input the network is sure about needs little change, an unfamiliar one pulls the weights hard."
)

st.header("The methods")
WORDS = {"higher": "scores above the digits", "lower": "scores BELOW the digits (reversed)",
         "chance": "does not separate from the digits"}
first = list_methods()[0]
explain_how = {row["method"]: row["how"] for row in explainability()}
for family, infos in methods_by_family().items():
    st.subheader(f"{family.capitalize()} methods — {FAMILIES[family]}")
    for info in infos:
        paper = info.paper if str(info.year) in info.paper else f"{info.paper} {info.year}"
        with st.expander(f"**{info.title}** (`{info.name}`) — {paper}", expanded=info is first):
            st.markdown(f"**Intuition.** {info.intuition}")
            st.latex(info.formula)
            if info.reading:
                st.markdown(f"**Reading its plots.** {info.reading}")
            if info.expected:
                st.markdown("**On the bundled model** (docs/RESULTS.md): "
                            + "; ".join(f"`{s}` {WORDS[d]}" for s, d in info.expected.items()) + ".")
            if info.defaults:
                st.caption("Parameters (sidebar → Method parameters): "
                           + ", ".join(f"`{k}` = {v}" for k, v in info.defaults.items()))
            if info.needs_fit:
                st.caption("Fitted once on ID training data (cached).")
            st.caption(f"Explain this score (Inspect, Playground → explain: this score): {explain_how[info.name]}.")
            st.markdown(f"Paper: [{paper}]({info.link})")

st.header("Which scores can be explained")
st.markdown("Inspect and the Playground attribute a score itself to the pixels (*explain: this score*) when it is a "
            "differentiable function of the input: its gradient says which pixels make it high. How each score gets "
            "there, as its method declares it:")
st.dataframe(pd.DataFrame(explainability()), hide_index=True, width="stretch", key="learn_explainable",
             column_order=["method", "family", "explainable", "how"],
             column_config={"how": st.column_config.TextColumn("how", width="large")})

st.header("Can I trust a prediction? Selective prediction and calibration")
st.markdown("Beyond *is this input out of distribution*: should I act on this prediction, and do its probabilities "
            "mean what they say? The Trust page draws each of these for the run.")
for term in TRUST_TERMS:
    with st.expander(f"**{term.name}**"):
        st.markdown(term.meaning)
        st.latex(term.formula)
        st.markdown(f"**Reading it.** {term.reading}")

st.header("A guided tour of the embedded default")
st.markdown("The default run: the bundled MNIST CNN, MNIST test digits as ID, and three OOD sets — rendered "
            "letters, uniform noise, and heavily noised digits (`corrupt:gaussian_noise:5`).")
tour = {  # what to look for on each page; titles and icons come from the page registry (gradviz.ui.pages)
    "home": "The metrics table: which method wins per OOD set? Noise is easy for almost everything; letters are "
            "hard — they look like strokes, just like digits.",
    "compare": "Pick `msp`, then `gaia_z`: do the letter scores overlap the digits less? Read the ROC's FPR95 marker "
               "— the fraction of letters accepted when 95 % of digits are.",
    "inspect": "Select the most uncertain ID digits: are they misclassified? The saliency maps show which strokes "
               "the prediction rests on.",
    "layers": "Which layer's gradient separates ID from letters best? Is it the last layer (cheap, closed form) or an "
              "early convolution? Compare with the entropy correlation.",
    "meta": "Does adding gradient metrics to entropy help? Train with noise as a 'known unknown' and test on letters: "
            "transfer to unseen concepts is uneven (Oberdiek et al.).",
    "trust": "Pick `msp`, then `gradnorm`: whose risk–coverage curve drops faster when the most uncertain digits are "
             "rejected? Move the slider and look at the accepted-but-wrong digits.",
    "corruptions": "Raise the severity: which scores climb? Lee & AlRegib's claim is that gradients detect corruption "
                   "better than confidence does.",
}
for n, (key, look_for) in enumerate(tour.items(), 1):
    p = page(key)
    c1, c2 = st.columns([1, 3])
    c1.page_link(p.path, label=f"{n}. {p.title}", icon=p.icon)
    c2.markdown(look_for)

st.header("Honest notes")
st.markdown(
    "- **Gradient methods are not uniformly better.** On the default run the output baselines (MSP, energy) are "
    "already strong on MNIST; compare, don't assume.\n"
    "- **Much of a gradient metric can be entropy in disguise.** On the bundled MNIST model the L1/L2/max "
    "statistics of the predicted-label gradient rank samples almost exactly like softmax entropy (Layer profiles → "
    "correlation map), and a meta classifier on gradient metrics alone did not beat entropy at spotting errors in "
    "our runs. Check on your own data before believing either way.\n"
    "- **A last-layer gradient is a feature norm times a softmax term.** GradNorm, ExGrad and the last-layer "
    "Oberdiek metrics factorise exactly into ‖h‖ × a function of p (Igoe et al. 2022). Compare → *Detection metrics* "
    "shows each factor's AUROC: on the bundled model GradNorm ranks samples almost like −‖h‖₁, which is at chance "
    "on letters.\n"
    "- **GradNorm is weak at CIFAR scale.** Strong on ImageNet (Huang et al. report FPR95 54.7 vs 77.0 for MSP), "
    "but in OpenOOD's CIFAR-10 leaderboard its AUROC is ~55–58 against ~88–91 for MSP.\n"
    "- **Names.** *GradNorm* here means Huang, Geng & Li 2021 (the KL-to-uniform norm). The confounding-label "
    "gradients are Lee & AlRegib 2020 — some libraries call those GradNorm too; gradviz does not.\n"
    "- **Two 2025 methods, two kinds of default.** PRO's defaults (ε = 0.003, one step, MSP) are its authors' "
    "code's, which tunes ε and the steps per benchmark. Gradient Short-Circuit's paper text was not available to "
    "this project: its short-circuited share (10 %), ranking and score are gradviz's choices, each a parameter; on "
    "penultimate features its gradient is the head's row for the predicted class.\n"
    "- **One sign convention.** Every score is an uncertainty: higher = more uncertain. Methods whose paper "
    "defines an ID score (MSP, energy, GradNorm) are negated.\n"
    "- **Small samples, wide error bars.** With a few hundred samples per set, AUROC differences below ~0.02 are "
    "noise; raise *Samples per set* in the sidebar before drawing conclusions.\n"
    "- **The bundled model errs rarely** (~1–2 % on MNIST), so misclassification detection has few positives."
)

st.header("Papers")
papers = {info.link: info.paper if str(info.year) in info.paper else f"{info.paper} {info.year}"
          for info in list_methods()}
st.markdown("\n".join(f"- [{title}]({link})" for link, title in papers.items()))
st.markdown("Measured results of this project: [docs/RESULTS.md](../docs/RESULTS.md) "
            "(in the repository: `docs/RESULTS.md`).")
