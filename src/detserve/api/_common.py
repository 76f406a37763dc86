"""What every family of the face shares: how a profile is named, and the progress sinks.

Nothing here is public by itself; :mod:`detserve.api` re-exports what is.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from detserve.profile import LoadedProfile
    from detserve.runtime.readiness import WaitProgress

#: a loaded profile, or the path of a profile file
ProfileLike: TypeAlias = "LoadedProfile | Path | str"
#: told each stage of a workflow as it begins
StageSink = Callable[[str], None]
#: told how a wait goes
WaitSink = Callable[["WaitProgress"], None]


def load_profile(config: ProfileLike) -> LoadedProfile:
    """Load and validate a profile (pins may still be null; commands that need them say so)."""
    from detserve.profile import load_profile as load_profile_file

    return load_profile_file(config)
