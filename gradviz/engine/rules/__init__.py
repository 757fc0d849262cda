"""Engine rules, one module per layer kind; importing the package registers every rule.

See :mod:`.registry` for what a rule is, and the "Adding a layer kind" section of
:mod:`gradviz.engine` for how to add one.
"""

from gradviz.engine.rules import conv1d, conv2d, linear, norms  # noqa: F401  (each registers its rules)
from gradviz.engine.rules.registry import RULES, Rule, named_args, rule, rule_of

__all__ = ["RULES", "Rule", "rule", "rule_of", "named_args"]
