"""`coordinator run --model ...`: flags become a sweep of the same schema; refusals name the flag, all at
once, exit 2, before anything is written (the run itself: tests/test_api.py)."""
import pytest

from fleetbench.coordinator import cli, flags
from tests.conftest import DEMO_CHECKPOINT

MODEL = ["--model", "timm:test_resnet", "--checkpoint", str(DEMO_CHECKPOINT)]


def _args(*argv):
    return cli._parser().parse_args(["run", *argv])


def test_flags_become_the_sweep_a_file_would_hold(tmp_path):
    from fleetbench.shared.sweep import BACKENDS
    sweep = flags.build(_args(*MODEL, "--compression", "none,int8-static", "--batch-sizes", "1,8",
                              "--input-size", "3,32,32", "--limit", "24", "--measure", "min_iters=3,min_duration_s=0.5"))
    assert sweep.name == sweep.models[0].name == "test_resnet"
    assert [c.name for c in sweep.compression] == ["none", "int8-static"] and sweep.batch_sizes == [1, 8]
    assert tuple(sweep.backends) == BACKENDS and sweep.models[0].input_size == (3, 32, 32)
    assert sweep.models[0].num_classes == 10 and sweep.dataset.kind == "digits" and sweep.dataset.limit == 24
    assert (sweep.measure.min_iters, sweep.measure.min_duration_s, sweep.measure.warmup_iters) == (3, 0.5, 10)
    for cls in ("a", "b", "c"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
    folder = flags.build(_args("--model", "onnx:nets/m.onnx", "--dataset", f"imagefolder:{tmp_path / 'imgs'}",
                               "--backends", "onnxruntime"))
    assert folder.models[0].name == "m" and folder.models[0].num_classes == 3 and folder.dataset.path


def test_bad_flags_are_named_all_at_once_exit_2_nothing_written(tmp_path, capsys):
    db, saved = tmp_path / "r.duckdb", tmp_path / "s.yaml"
    code = cli.main(["run", "--model", "tim:resnet18", "--backends", "pytorch,onx", "--batch-sizes", "1,x",
                     "--compression", "int9", "--input-size", "3,32", "--measure", "min_iters=x",
                     "--db", str(db), "--save-sweep", str(saved)])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 6, err
    for flag in ("--model", "--backends (backends[1])", "--batch-sizes", "--compression (compression[0])",
                 "--input-size", "--measure (measure.min_iters)"):
        assert any(line.startswith(f"coordinator: {flag}") for line in err), (flag, err)
    assert not db.exists() and not saved.exists()
    assert cli.main(["run", *MODEL, "--checkpoint", str(tmp_path / "none.pt"), "--save-sweep", str(saved)]) == 2
    assert capsys.readouterr().err.startswith("coordinator: --checkpoint: ") and not saved.exists()


def test_save_sweep_keeps_an_existing_file_and_a_sweep_file_takes_no_model_flags(tmp_path, capsys):
    saved = tmp_path / "s.yaml"
    saved.write_text("mine\n")
    assert cli.main(["run", *MODEL, "--save-sweep", str(saved)]) == 2
    assert "exists; give --force" in capsys.readouterr().err and saved.read_text() == "mine\n"
    assert cli.main(["run", str(saved), "--checkpoint", "w.pt"]) == 2
    assert "--checkpoint: only with --model" in capsys.readouterr().err
    assert cli.main(["run", str(saved), *MODEL]) == 2 and "not both" in capsys.readouterr().err
    assert cli.main(["run"]) == 2 and "--model" in capsys.readouterr().err


@pytest.mark.parametrize("given", ["imagefolder", "digits:/data"])
def test_dataset_flag_shapes(given, capsys):
    assert cli.main(["run", *MODEL, "--dataset", given]) == 2
    assert capsys.readouterr().err.startswith("coordinator: --dataset: ")
