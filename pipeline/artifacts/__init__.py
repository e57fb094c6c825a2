"""The artifact store: one versioned directory per run (`ROOT/v0001`, …), built stage by stage.

    art = Artifact.create("artifacts", source={"id": "HuggingFaceTB/SmolLM2-135M", "kind": "hub"},
                          recipe=recipe.model_dump())
    if not art.is_current("slice", options=opts, inputs=["search/arch.json"]):
        with art.stage("slice", options=opts, inputs=["search/arch.json"]) as st:
            model.save_pretrained(st.dir / "model")
            st.metrics["params"] = n_params
    problems = verify(art.path)
    print(summary(art.path))

The manifest schema is documented in docs/manifest.md.
"""

from .manifest import (PIPELINE, SCHEMA, SCHEMA_VERSION, Manifest, OutputFile, SourceModel, StageRecord,
                       library_versions, read_manifest)
from .store import Artifact, StageRun
from .summary import format_summary, summary
from .verify import verify
from .versions import MANIFEST_NAME, latest_version, list_versions, parse_version, version_name

__all__ = [
    "MANIFEST_NAME", "PIPELINE", "SCHEMA", "SCHEMA_VERSION", "Artifact", "Manifest", "OutputFile", "SourceModel",
    "StageRecord", "StageRun", "format_summary", "latest_version", "library_versions", "list_versions",
    "parse_version", "read_manifest", "summary", "verify", "version_name",
]
