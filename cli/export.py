"""``mamlctl export``: copy a series' current adapted ONNX model out of the models folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        series: Annotated[
            str, typer.Option("--series", "-s", help="Series whose model to export.")
        ],
        output: Annotated[
            Path, typer.Option("--output", "-o", help="Destination .onnx file (overwritten).")
        ],
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
    ) -> None:
        """Write SERIES' current adapted model to OUTPUT: a standalone ONNX file (raw window in,
        forecast and sigma out) whose metadata carries the lineage. The file is verified against
        the sha256 the registry recorded before it is copied."""
        import os
        import tempfile

        from mamlctl.cli.output import emit_json, load_settings
        from mamlctl.errors import InputError, NotFoundError
        from mamlctl.maml.export import parse_metadata
        from mamlctl.registry import queries as q
        from mamlctl.registry.db import open_registry
        from mamlctl.registry.model_files import open_verified, sha256_hex

        settings = load_settings()
        target = output.expanduser()
        if target.is_dir():
            raise InputError(f"--output {target} is a folder; give a file name ending in .onnx")
        try:  # check the destination before any work: a bad path is the user's, one line
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(
                f"cannot write --output {target}: {err.strerror or err} ({err.filename})"
            ) from None
        with open_registry(settings, create=False) as factory, factory() as session:
            record = q.current_adapted_model(session, series)
        if record is None:
            raise NotFoundError(
                f"series {series!r} has no adapted model; run `mamlctl adapt --family FAMILY`"
            )
        data = open_verified(settings.models_dir, record.path, sha256=record.sha256)
        from mamlctl.registry.model_files import MODEL_FILE_MODE

        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        except OSError as err:
            raise InputError(f"cannot write --output {target}: {err.strerror or err}") from None
        try:
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), MODEL_FILE_MODE)  # mkstemp makes 0600
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except OSError as err:
            Path(tmp).unlink(missing_ok=True)
            raise InputError(f"cannot write --output {target}: {err.strerror or err}") from None
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        import onnx

        proto = onnx.load_from_string(data)
        meta = parse_metadata({p.key: p.value for p in proto.metadata_props})
        doc = {
            "series_id": series,
            "output": str(target),
            "sha256": sha256_hex(data),
            "bytes": len(data),
            "registered_model": meta.registered_model,
            "initializer_version": meta.initializer_version,
            "adapted_at": meta.adapted_at,
            "window": meta.window,
            "horizon": meta.horizon,
        }
        if as_json:
            emit_json(doc)
            return
        typer.echo(
            f"wrote {target} ({len(data)} bytes, sha256 {doc['sha256'][:16]}…): {series} from "
            f"{meta.registered_model} v{meta.initializer_version}, adapted {meta.adapted_at}"
        )
