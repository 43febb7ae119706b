"""The embedded MLflow store follows its home when the home is moved or copied.

MLflow's SQLite store keeps absolute artifact locations: each experiment's
``artifact_location`` (``file:///<home>/mlflow/artifacts/<experiment>``; MLflow resolves a
relative one against the working directory at creation, so it cannot be made relative) and
each run's ``artifact_uri`` below it. A copied home would therefore read its initializers from,
and write its new runs into, the original home; with the original deleted, nothing loads.

MLflow offers no public API to change either column (``MlflowClient`` cannot move an
experiment's artifact location or a run's artifact URI), so :func:`reroot_embedded_store`
rewrites them with SQLAlchemy, in the home's own ``mlflow.db`` only, when a store is opened
and the stored root differs from the current home's artifact root. It touches only the
experiments mamlctl created (tag ``managed_by=mamlctl``, named after their folder), their runs
and logged models, and the model versions whose storage location is under the old root;
``runs:/`` sources of registered versions need no change. Idempotent, one transaction; the
artifact files themselves were copied with the home.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import inspect, text

from mamlctl.errors import StoreError


@dataclass(frozen=True, slots=True, kw_only=True)
class Rerooted:
    """One experiment moved from ``old`` to ``new`` (artifact location URIs)."""

    experiment: str
    old: str
    new: str
    runs: int


_MANAGED = text(
    "SELECT e.experiment_id, e.name, e.artifact_location FROM experiments e "
    "JOIN experiment_tags t ON t.experiment_id = e.experiment_id "
    "WHERE t.key = 'managed_by' AND t.value = 'mamlctl'"
)


_SET_LOCATION = text("UPDATE experiments SET artifact_location = :new WHERE experiment_id = :e")


def _replace_prefix(table: str, column: str, where: str = "") -> str:
    return (
        f"UPDATE {table} SET {column} = :new || substr({column}, :n + 1) "
        f"WHERE substr({column}, 1, :n) = :old{where}"
    )


def reroot_embedded_store(db_path: Path, artifact_root: Path) -> list[Rerooted]:
    """Point the mamlctl experiments of the SQLite store ``db_path`` (and their runs) at
    ``artifact_root`` when they point elsewhere (see the module doc); returns what moved."""
    if not db_path.is_file():
        return []
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError

    root = artifact_root.resolve()
    # A plain engine: mamlctl's own (make_engine) would switch MLflow's file to WAL.
    engine = create_engine(f"sqlite:///{db_path}", connect_args={"timeout": 30})
    try:
        tables = set(inspect(engine).get_table_names())
        if not {"experiments", "experiment_tags", "runs"} <= tables:
            return []  # not (yet) an MLflow store: MLflow creates it on first use
        moved: list[Rerooted] = []
        with engine.begin() as conn:
            for experiment_id, name, location in conn.execute(_MANAGED).all():
                expected = (root / str(name)).as_uri()
                old = str(location or "")
                if old == expected or not old.startswith("file:") or not old.endswith(f"/{name}"):
                    continue
                old_prefix, new_prefix = old + "/", expected + "/"
                args = {"old": old_prefix, "new": new_prefix, "n": len(old_prefix)}
                conn.execute(
                    text(
                        "UPDATE experiments SET artifact_location = :new WHERE experiment_id = :e"
                    ),
                    {"new": expected, "e": experiment_id},
                )
                runs = conn.execute(
                    text(_replace_prefix("runs", "artifact_uri", " AND experiment_id = :e")),
                    {**args, "e": experiment_id},
                ).rowcount
                if "logged_models" in tables:
                    conn.execute(
                        text(
                            _replace_prefix(
                                "logged_models", "artifact_location", " AND experiment_id = :e"
                            )
                        ),
                        {**args, "e": experiment_id},
                    )
                if "model_versions" in tables:
                    conn.execute(text(_replace_prefix("model_versions", "storage_location")), args)
                moved.append(Rerooted(experiment=str(name), old=old, new=expected, runs=runs))
        return moved
    except SQLAlchemyError as err:
        raise StoreError(
            f"cannot re-root the embedded MLflow store {db_path} to {root}: "
            f"{str(err).splitlines()[0]}"
        ) from None
    finally:
        engine.dispose()
