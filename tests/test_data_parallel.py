"""Data-parallel `finedefics eval` and `finedefics data describe` (``finedefics_data.sharding``): a launch over 2 CPU
processes (torchrun, gloo) writes what one process writes, in the same order; only rank 0 writes."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from eval_helpers import write_option_benchmark

from finedefics_cli import main
from finedefics_data.sharding import DataParallel

# What differs between two runs of one command, launched or not: clocks, speeds and the world size.
TIMING_KEYS = {"created", "seconds", "images_per_second", "category_cache_seconds", "processes"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(arguments: list[str], cwd: Path, processes: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=N -m finedefics_cli ARGUMENTS`` on the CPU (gloo), one thread per process."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
               "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "finedefics_cli", *arguments]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=cwd,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def _without_timings(value):
    if isinstance(value, dict):
        return {key: _without_timings(item) for key, item in value.items() if key not in TIMING_KEYS}
    if isinstance(value, list):
        return [_without_timings(item) for item in value]
    return value


def _files(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file()}


def test_one_process_shards_nothing_and_the_slices_cover_the_items_in_order():
    alone = DataParallel()
    assert (alone.rank, alone.world_size, alone.is_main, alone.device) == (0, 1, True, None)
    assert alone.shard(range(5)) == [0, 1, 2, 3, 4]
    assert alone.merge(["a", "b"]) == ["a", "b"] and alone.gather({"x": 1}) == [{"x": 1}]
    for length in (0, 1, 2, 5, 7):
        for world_size in (1, 2, 3, 8):
            slices = []
            for rank in range(world_size):
                alone.rank, alone.world_size = rank, world_size
                start, stop = alone.bounds(length)
                slices.append(list(range(length))[start:stop])
            assert [item for part in slices for item in part] == list(range(length)), (length, world_size)
            assert max(map(len, slices)) - min(map(len, slices)) <= 1


def _two_benchmarks(folder: Path) -> tuple[Path, Path]:
    """Six images (one unreadable, in rank 1's share) and a benchmark of a single image (rank 1 gets none)."""
    six = write_option_benchmark(folder / "six", per_category=1)
    (folder / "six" / "images" / "5-0.png").write_bytes(b"not a png")
    options = json.loads(six.read_text(encoding="utf-8"))
    first = next(iter(options))
    one = folder / "six" / "single.json"
    one.write_text(json.dumps({first: options[first][:1]}), encoding="utf-8")
    return six, one


def test_eval_over_two_processes_writes_the_single_process_report(micro_checkpoint, tmp_path):
    six, one = _two_benchmarks(tmp_path / "benchmarks")
    arguments = ["eval", "--model", str(micro_checkpoint), "--benchmark", str(six), str(one), "--mode", "generate",
                 "likelihood", "embedding", "--batch-size", "2", "--bootstrap-samples", "50", "--no-progress",
                 "--no-plots", "--seed", "1"]
    assert main([*arguments, "--output-dir", str(tmp_path / "one")]) == 0
    result = _launch([*arguments, "--output-dir", str(tmp_path / "two")], tmp_path)

    assert "data-parallel evaluation over 2 processes" in result.stdout
    assert result.stdout.count("options generate: accuracy") == 1  # rank 1 prints and writes nothing
    one_files, two_files = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert one_files.keys() == two_files.keys()
    for name in one_files:
        if name.endswith("report.md"):
            continue  # holds the speeds
        if name.endswith("report.json"):
            single, launched = (json.loads(files[name]) for files in (one_files, two_files))
            assert launched.get("processes", 2) == 2 and single.get("processes", 1) == 1
            assert _without_timings(launched) == _without_timings(single), name
        else:  # the FOCI prediction files: every record, in order, byte for byte
            assert two_files[name] == one_files[name], name
    six_report = json.loads(two_files["options/report.json"])
    assert (six_report["n"], six_report["n_scored"], six_report["skipped"]["unreadable_images"]) == (6, 5, 1)
    single_report = json.loads(two_files["single/report.json"])
    assert single_report["n_scored"] == 1 and single_report["modes"]["generate"]["images_per_second"] > 0
    predictions = json.loads(two_files["options/predictions-likelihood.json"])["predictions"]
    assert [record["image"] for record in predictions] == [f"images/{c}-0.png" for c in range(5)]


def test_rank_caches_are_folded_into_the_shared_cache(tmp_path):
    from finedefics_data.answer_cache import AnswerCache, RankAnswerCache, merge_rank_caches, rank_cache_files

    path = tmp_path / "cache.sqlite"
    shared = AnswerCache(path)
    shared.put_many([("k0", "", "p", "m", "r", "shared")])
    shared.close()
    ranks = [RankAnswerCache(path, rank) for rank in (0, 1)]
    ranks[0].put_many([("k1", "", "p", "m", "r", "rank 0")])
    ranks[1].put_many([("k2", "", "p", "m", "r", "rank 1")])
    assert ranks[1].get_many(["k0", "k1", "k2"]) == {"k0": "shared", "k2": "rank 1"}  # its own file and the shared
    for cache in ranks:
        cache.close()
    assert [file.name for file in rank_cache_files(path)] == ["cache.rank0.sqlite", "cache.rank1.sqlite"]
    assert merge_rank_caches(path) == 2 and rank_cache_files(path) == []
    merged = AnswerCache(path)
    assert merged.get_many(["k0", "k1", "k2"]) == {"k0": "shared", "k1": "rank 0", "k2": "rank 1"}
    merged.close()


def _dataset_rows(folder: Path) -> dict:
    import datasets

    loaded = datasets.load_from_disk(str(folder))
    return {split: table.cast_column("image", datasets.Image(decode=False)).to_list()
            for split, table in loaded.items()}


def test_describe_over_two_processes_writes_the_single_process_output(tmp_path, capsys):
    from describe_helpers import save_stock_idefics2, save_tiny_causal_lm, write_image_folder

    from finedefics_data.answer_cache import AnswerCache, rank_cache_files

    images = write_image_folder(tmp_path / "images", per_split={"train": 2, "test": 1})  # 9 images, 3 categories
    (images / "train" / "Mirel Vane" / "broken.png").write_bytes(b"not a png")  # skipped, in rank 1's share
    vqa, summariser = save_stock_idefics2(tmp_path / "vqa"), save_tiny_causal_lm(tmp_path / "lm")
    arguments = ["data", "describe", str(images), "--vqa-model", str(vqa), "--summary-model", str(summariser),
                 "--attributes", "body colour,wheels", "--noun", "vehicle", "--batch-size", "2",
                 "--max-new-tokens", "4", "--no-progress"]
    assert main([*arguments, "--output", str(tmp_path / "one")]) == 0
    result = _launch([*arguments, "--output", str(tmp_path / "two")], tmp_path)

    assert result.stdout.count("described ") == 1  # rank 1 prints and writes nothing
    one, two = tmp_path / "one", tmp_path / "two"
    assert _dataset_rows(two) == _dataset_rows(one)
    for name in ("describe_answers.jsonl", "describe_run.json", "finedefics_data.json"):
        assert (two / name).read_bytes() == (one / name).read_bytes(), name
    reports = [json.loads((folder / "describe_report.json").read_text(encoding="utf-8")) for folder in (one, two)]
    assert (reports[0]["processes"], reports[1]["processes"]) == (1, 2)
    assert reports[1]["skipped_images"]["count"] == 1 and reports[1]["answers"]["computed"] > 0
    # The same answers in all, but a rank does not see what the other computes in the same run: a prompt repeated
    # in the other rank's share is asked again there instead of being read back from the cache.
    assert reports[1]["answers"]["total"] == reports[0]["answers"]["total"]
    assert [s["image"] for s in reports[1]["skipped_images"]["images"]] == [str(images / "train" / "Mirel Vane" /
                                                                             "broken.png")]
    ignored = TIMING_KEYS | {"asking_seconds", "output", "answers", "skipped_images"}
    assert ({k: v for k, v in reports[1].items() if k not in ignored}
            == {k: v for k, v in reports[0].items() if k not in ignored})
    # One cache file, holding what one process's holds: a rerun in one process recomputes nothing.
    assert rank_cache_files(two / "describe_cache.sqlite") == []
    caches = [AnswerCache(folder / "describe_cache.sqlite") for folder in (one, two)]
    assert len(caches[1]) == len(caches[0]) > 0
    for cache in caches:
        cache.close()
    capsys.readouterr()
    assert main([*arguments, "--output", str(two), "--resume"]) == 0
    assert "answers: 0 computed" in capsys.readouterr().out
