"""``{prf:guideline}``: a numbered box titled "Guideline N", referenced with ``{prf:ref}``.

Kim et al. (2023) state two guidelines beside their propositions. sphinx-proof has no
"guideline" type, so this directive is its criterion box under another name: it counts
with the criterion counter (the book uses no criteria), looks like a criterion, and
sphinx-proof prints its type as "Guideline". Loaded by _config.yml (local_extensions).
"""

from sphinx_proof import directive as _directive
from sphinx_proof.proof_type import CriterionDirective


class GuidelineDirective(CriterionDirective):
    name = "guideline"

    def run(self):
        self.options.setdefault("class", ["criterion"])  # the criterion's colours
        return super().run()


def setup(app):
    app.setup_extension("sphinx_proof")
    _directive.DEFAULT_REALTYP_TO_COUNTERTYP.setdefault("guideline", "criterion")
    app.add_directive_to_domain("prf", "guideline", GuidelineDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
