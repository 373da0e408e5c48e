"""Pipeline specs: round trips through dicts and YAML, and errors that name what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from gristmill import DocumentBatch, Pipeline, ProcessingStage, Resources, register_stage
from gristmill.errors import SpecError, StageParamsError, StageRegistryError, UnknownStageError

from toy_stages import BatchTagger, KeepLong, LengthPipeline, MakeDocs, Recorder, docs_of


def _pipeline() -> Pipeline:
    return Pipeline(
        "toy",
        [
            MakeDocs(num_tasks=3),
            LengthPipeline(min_words=2),
            BatchTagger(tag="q").with_(batch_size=3, resources=Resources(cpus=0.5)),
        ],
        description="round trip",
    )


def test_to_spec_names_stages_and_keeps_only_non_default_params_and_overrides() -> None:
    assert _pipeline().to_spec() == {
        "name": "toy",
        "description": "round trip",
        "stages": [
            {"stage": "MakeDocs", "params": {"num_tasks": 3}},
            {"stage": "LengthPipeline", "params": {"min_words": 2}},
            {
                "stage": "BatchTagger",
                "params": {"tag": "q"},
                "with": {
                    "resources": {"cpus": 0.5, "gpu_memory_gb": 0.0, "gpus": 0.0},
                    "batch_size": 3,
                },
            },
        ],
    }


def test_spec_round_trip_rebuilds_an_equal_pipeline_with_identical_outputs() -> None:
    original = _pipeline()
    rebuilt = Pipeline.from_spec(original.to_spec())
    assert rebuilt.to_spec() == original.to_spec()
    assert rebuilt.stages[2].batch_size == 3
    assert rebuilt.stages[2].resources == Resources(cpus=0.5)
    assert docs_of(rebuilt.run()) == docs_of(original.run())


def test_yaml_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "toy.yaml"
    path.write_text(_pipeline().to_yaml())
    assert Pipeline.from_spec(path).to_spec() == _pipeline().to_spec()
    assert Pipeline.from_spec(str(path)).name == "toy"


def test_unknown_stage_is_named_with_its_registered_alternatives() -> None:
    spec = {"name": "p", "stages": [{"stage": "MakeDocs"}, {"stage": "NoSuchStage"}]}
    with pytest.raises(UnknownStageError) as caught:
        Pipeline.from_spec(spec)
    message = str(caught.value)
    assert message.startswith("unknown stage 'NoSuchStage' (registered stages: ")
    assert "AddLength" in message


def test_bad_param_type_names_stage_position_and_param() -> None:
    spec = {"name": "p", "stages": [{"stage": "MakeDocs"}, {"stage": "KeepLong", "params": {"min_words": "many"}}]}  # fmt: skip
    with pytest.raises(StageParamsError, match=r"stage #2 'KeepLong': bad params: min_words: Input should be a valid integer"):  # fmt: skip
        Pipeline.from_spec(spec)


def test_unknown_param_is_reported_as_such() -> None:
    spec = {"name": "p", "stages": [{"stage": "KeepLong", "params": {"min_word": 3}}]}
    with pytest.raises(StageParamsError, match=r"stage #1 'KeepLong': bad params: min_word: unknown parameter"):  # fmt: skip
        Pipeline.from_spec(spec)


def test_params_are_coerced_by_their_annotations() -> None:
    spec = {"name": "p", "stages": [{"stage": "KeepLong", "params": {"min_words": "4"}}]}
    stage = Pipeline.from_spec(spec).stages[0]
    assert isinstance(stage, KeepLong)
    assert stage.min_words == 4


def test_bad_overrides_are_rejected_naming_the_stage() -> None:
    unknown = {"name": "p", "stages": [{"stage": "AddLength", "with": {"min_words": 3}}]}
    with pytest.raises(StageParamsError, match=r"stage #1 'AddLength': 'with' accepts name, resources, batch_size, fans_out, task_timeout_s; got min_words"):  # fmt: skip
        Pipeline.from_spec(unknown)
    negative = {
        "name": "p",
        "stages": [{"stage": "AddLength", "with": {"resources": {"cpus": -1}}}],
    }
    with pytest.raises(StageParamsError, match=r"stage #1 'AddLength': bad 'with': Resources.cpus"):
        Pipeline.from_spec(negative)


def test_malformed_specs_say_what_is_missing() -> None:
    with pytest.raises(SpecError, match=r"pipeline spec: stages: Field required"):
        Pipeline.from_spec({"name": "p"})
    with pytest.raises(SpecError, match=r"stages: List should have at least 1 item"):
        Pipeline.from_spec({"name": "p", "stages": []})
    with pytest.raises(SpecError, match=r"stages.0.stag: unknown parameter"):
        Pipeline.from_spec({"name": "p", "stages": [{"stag": "AddLength"}]})


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: p\nstages:\n  - stage: [AddLength\n")
    with pytest.raises(SpecError) as caught:
        Pipeline.from_spec(path)
    assert str(caught.value).startswith(f"pipeline spec '{path}': line 4, column 1: invalid YAML")


def test_missing_spec_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(SpecError, match=rf"pipeline spec '{path}': no such file"):
        Pipeline.from_spec(path)


def test_yaml_that_is_not_a_mapping_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- AddLength\n")
    with pytest.raises(SpecError, match=r"expected a mapping with 'name' and 'stages'"):
        Pipeline.from_spec(path)


def test_to_spec_of_an_unregistered_stage_says_how_to_register_it() -> None:
    with pytest.raises(StageRegistryError, match=r"decorate it with @register_stage"):
        Pipeline("p", [Recorder([])]).to_spec()


def test_constructor_errors_are_reported_as_param_errors() -> None:
    spec = {"name": "p", "stages": [{"stage": "Sampler", "params": {"fraction": 2}}]}
    with pytest.raises(StageParamsError, match=r"stage #1 'Sampler': ValueError: fraction must be in \(0, 1\], got 2.0"):  # fmt: skip
        Pipeline.from_spec(spec)


@register_stage(name="test_spec.Holder")
class Holder(ProcessingStage[DocumentBatch, DocumentBatch]):
    def __init__(self, thing: object = None):
        self.thing = thing

    def process(self, task: DocumentBatch) -> DocumentBatch:
        return task


def test_params_that_yaml_cannot_hold_are_refused_by_to_spec() -> None:
    assert Pipeline("p", [Holder(thing={"a": [1, 2]})]).to_spec()["stages"] == [
        {"stage": "test_spec.Holder", "params": {"thing": {"a": [1, 2]}}}
    ]
    with pytest.raises(SpecError, match=r"stage 'Holder': parameter 'thing' = <object object at .*> cannot be written to a spec"):  # fmt: skip
        Pipeline("p", [Holder(thing=object())]).to_spec()
