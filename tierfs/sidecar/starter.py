"""The lake's usual zones and the starting rule file `tierfs lake init` writes."""

from __future__ import annotations

ZONES = ("raw", "processed", "curated", "models", "experiments")

STARTER_RULES = {
    "s3": ("STANDARD_IA", "GLACIER_IR", "DEEP_ARCHIVE"),
    "gcs": ("NEARLINE", "COLDLINE", "ARCHIVE"),
    "azure": ("Cool", "Cold", "Archive"),
}


def starter_rules(provider: str) -> str:
    """A rule file to edit: datasets cool down, experiments expire, production models stay."""
    ia, cold, archive = STARTER_RULES[provider]
    return f'''# tierfs lifecycle rules ({provider} storage classes). Edit to taste, then:
#   tierfs lifecycle plan LAKE_URL --rules THIS_FILE
# Ages are whole days since an object was written.

[[rule]]
id = "raw-cool-down"
prefix = "raw/"
transitions = [{{ days = 30, class = "{ia}" }}, {{ days = 90, class = "{cold}" }}, {{ days = 365, class = "{archive}" }}]

[[rule]]
id = "processed-cool-down"
prefix = "processed/"
transitions = [{{ days = 30, class = "{ia}" }}, {{ days = 90, class = "{cold}" }}]

[[rule]]
id = "curated-infrequent"
prefix = "curated/"
transitions = [{{ days = 90, class = "{ia}" }}]
noncurrent_transitions = [{{ days = 30, class = "{cold}" }}]
noncurrent_expiration_days = 730

[[rule]]
id = "experiments-expire"
prefix = "experiments/"
expiration_days = 90

[[rule]]
id = "models-archive-old-checkpoints"
prefix = "models/checkpoints/"
transitions = [{{ days = 30, class = "{ia}" }}]
# models/production/ has no rule: production models never expire.

[[retention]]
dataset = "*"
keep_last = 10
keep_tagged = true
expire_untagged_after_days = 365
'''
