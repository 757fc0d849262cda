"""What each curve and number of the Trust page means, in words for a class: the one text the Learn page and the
Trust page render (like the method registry's intuition and formula)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Term", "TRUST_TERMS"]


@dataclass(frozen=True)
class Term:
    """One curve or number: its name, a formula (LaTeX), what it means and how to read it."""

    name: str
    formula: str
    meaning: str
    reading: str


TRUST_TERMS: tuple[Term, ...] = (
    Term("Risk–coverage curve",
         r"\text{risk}(k) = \frac{\#\{\text{errors among the } k \text{ least uncertain}\}}{k},\quad "
         r"\text{coverage} = k/n",
         "Let the model answer only when its uncertainty score is low, and hand the rest to a person. Coverage is the "
         "share it still answers; risk is how often those answers are wrong.",
         "Read it from right to left: at coverage 1 every prediction is kept and the risk is the plain error rate. A "
         "good score makes the curve drop fast as you reject more. The oracle (every right answer kept before any "
         "wrong one) is the floor; a random score stays flat at the error rate."),
    Term("AURC and E-AURC",
         r"\text{AURC} = \frac{1}{n}\sum_{k=1}^{n} \text{risk}(k),\qquad \text{E-AURC} = \text{AURC} - "
         r"\text{AURC}_{\text{oracle}}",
         "The area under the risk–coverage curve: the error among accepted answers, averaged over every coverage "
         "(Geifman et al. 2019). E-AURC subtracts the oracle's area, which only depends on how many errors there are.",
         "Lower is better. Use E-AURC to compare scores across models or sets with different error rates; AURC mixes "
         "how good the score is with how good the classifier is."),
    Term("Reliability diagram",
         r"\text{acc}(B_m) \text{ against } \text{conf}(B_m) = \frac{1}{|B_m|}\sum_{i \in B_m} \max_k p_{ik}",
         "Group the predictions by their confidence (bins), then ask of each group: how often was it right? A "
         "calibrated model that says 90 % is right 90 % of the time.",
         "Bars below the diagonal: overconfident (it claims more than it delivers); above: underconfident. The "
         "counts underneath matter: a bin with five images says little. Equal-mass bins hold the same number of "
         "images each, so no bin is nearly empty."),
    Term("ECE, MCE, Brier score, NLL",
         r"\text{ECE} = \sum_m \frac{|B_m|}{n}\,\bigl|\text{acc}(B_m) - \text{conf}(B_m)\bigr|,\quad "
         r"\text{MCE} = \max_m \bigl|\text{acc}(B_m) - \text{conf}(B_m)\bigr|",
         "ECE is the average gap between the bars and the diagonal, weighted by how many images each bar holds; MCE is "
         "the largest gap. The Brier score (squared error of the whole probability vector) and the NLL (−log of the "
         "probability given to the true class) score the probabilities without bins.",
         "All lower = better. ECE depends on the bins (number, equal width or equal mass): compare ECEs only with the "
         "same bins. One confident mistake can dominate the NLL."),
    Term("Temperature scaling",
         r"p = \operatorname{softmax}(z / T),\qquad T^\star = \arg\min_T\; -\frac{1}{n}\sum_i "
         r"\log \operatorname{softmax}(z_i / T)_{y_i}",
         "One number T divides every logit: T > 1 softens overconfident probabilities, T < 1 sharpens them. It is "
         "fitted on labelled data the model was not tested on (Guo et al. 2017); the predictions never change.",
         "Fit T on held-out data, never on the test set. Fitted on the images the model was trained on, T comes out "
         "below 1 (the model is nearly always right there) and can make test calibration worse, most of all under "
         "corruption."),
)
