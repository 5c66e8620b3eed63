"""Risk tiers moved to ``service.guard.tiers`` (pure review policy that guard and review both
import, one way). This name is kept only for ``service/cli/keys.py`` until the API-keys move
imports ``service.guard.tiers`` itself; delete it then."""

from service.guard.tiers import Risk as Risk
