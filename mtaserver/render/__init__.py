"""Template rendering for the HTTP send API: SendGrid dynamic templates and substitutions.

Pure (no I/O): a Handlebars subset compiled to a node tree and interpreted under a budget
(see ``template.py``), SendGrid's helpers (``helpers.py``) and legacy literal
substitutions (``substitute.py``).
"""

from mtaserver.render.errors import BudgetExceeded, TemplateError
from mtaserver.render.substitute import substitute
from mtaserver.render.template import (
    CompileLimits,
    RenderBudget,
    Template,
    TemplateCache,
    compile_template,
)
from mtaserver.render.values import freeze

__all__ = [
    "BudgetExceeded",
    "CompileLimits",
    "RenderBudget",
    "Template",
    "TemplateCache",
    "TemplateError",
    "compile_template",
    "freeze",
    "substitute",
]
