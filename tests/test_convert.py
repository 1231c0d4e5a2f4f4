"""`vqa data convert`: each converter on a fixture written in its upstream format
(tests/fixtures/convert/<format>/), with placeholder clip files made per test."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vqa.convert import FORMATS, ConvertError, convert

FIXTURES = Path(__file__).parent / "fixtures" / "convert"
SRC = {
    "music-avqa": FIXTURES / "music-avqa" / "avqa-test.json",
    "msrvtt-qa": FIXTURES / "msrvtt-qa" / "test_qa.json",
    "msvd-qa": FIXTURES / "msvd-qa" / "val_qa.json",
    "activitynet-qa": FIXTURES / "activitynet-qa" / "val_q.json",
    "videoinstruct": FIXTURES / "videoinstruct" / "VideoInstruct_Dataset.json",
    "csv": FIXTURES / "csv" / "qa.csv",
}


def make_clips(folder: Path, *names: str) -> Path:
    """Empty files standing in for clips: the converters only look for them."""
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")
    return folder


def read_qa(out: Path) -> dict[str, dict]:
    lines = (out / "qa.jsonl").read_text(encoding="utf-8").splitlines()
    return {r["id"]: r for r in map(json.loads, lines)}


def question(r: dict) -> str:
    human = r["conversations"][0]
    assert human["from"] == "human" and human["value"].startswith("<video>\n")
    return human["value"].removeprefix("<video>\n")


def answer(r: dict) -> str:
    assert [t["from"] for t in r["conversations"]] == ["human", "gpt"]
    return r["conversations"][1]["value"]


def broken_copy(tmp_path: Path, fmt: str, edit) -> Path:
    """A copy of the format's fixture folder with one record changed by edit(records)."""
    folder = shutil.copytree(SRC[fmt].parent, tmp_path / "broken")
    src = folder / SRC[fmt].name
    records = json.loads(src.read_text())
    edit(records)
    src.write_text(json.dumps(records))
    return src


def test_every_format_is_registered_with_a_fixture():
    assert set(FORMATS) == set(SRC)


@pytest.mark.parametrize("fmt", sorted(SRC))
def test_no_clips_means_every_record_is_reported_missing(fmt, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    summary = convert(fmt, SRC[fmt], tmp_path / "out", videos)
    assert summary.written == 0 and len(summary.missing) >= 3
    assert (tmp_path / "out" / "qa.jsonl").read_text() == ""
    line = summary.line()
    assert f"skipped {len(summary.missing)}" in line and str(videos) in line and summary.missing[0] in line


def test_music_avqa_fills_templates_keeps_types_and_reports_the_missing_clip(tmp_path):
    videos = make_clips(tmp_path / "videos", "00000272.mp4", "sa00007434.mp4", "00000028.webm")
    out = tmp_path / "out"
    summary = convert("music-avqa", SRC["music-avqa"], out, videos)
    assert (summary.written, summary.missing) == (3, ["157"])
    qa = read_qa(out)
    assert question(qa["50"]) == "Where is the first sounding instrument?"
    assert question(qa["28884"]) == "Are there piano and ukulele instruments in the video?"
    assert question(qa["7"]) == "Is the ukulele in the video always playing?"
    assert [answer(qa[i]) for i in ("50", "28884", "7")] == ["left", "no", "yes"]  # from the `anser` field
    assert [qa[i]["type"] for i in ("50", "28884", "7")] == ["Audio-Visual/Temporal", "Visual/Counting",
                                                           "Audio-Visual/Existential"]
    assert qa["7"]["video"] == "../videos/00000028.webm"
    assert (out / qa["50"]["video"]).resolve() == (videos / "00000272.mp4").resolve()


def test_music_avqa_malformed_record_names_file_and_index(tmp_path):
    src = broken_copy(tmp_path, "music-avqa", lambda rs: rs[2].pop("anser"))
    with pytest.raises(ConvertError, match=r"avqa-test\.json: record \[2\]: no field 'anser'"):
        convert("music-avqa", src, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_music_avqa_template_values_must_match_the_placeholders(tmp_path):
    src = broken_copy(tmp_path, "music-avqa", lambda rs: rs[2].update(templ_values='["piano"]'))
    with pytest.raises(ConvertError, match=r"record \[2\]: question .* has 2 placeholder\(s\) but templ_values has 1"):
        convert("music-avqa", src, tmp_path / "out")


def test_msrvtt_qa_finds_clips_in_subfolders_and_types_questions_by_wh_word(tmp_path):
    videos = make_clips(tmp_path / "MSRVTT", "TrainValVideo/video0.mp4", "TestVideo/video7010.mp4")
    summary = convert("msrvtt-qa", SRC["msrvtt-qa"], tmp_path / "out", videos)
    assert (summary.written, summary.missing) == (3, ["3"])
    qa = read_qa(tmp_path / "out")
    assert qa["0"]["video"] == qa["1"]["video"] == "../MSRVTT/TrainValVideo/video0.mp4"
    assert qa["2"]["video"] == "../MSRVTT/TestVideo/video7010.mp4"
    assert (question(qa["1"]), answer(qa["1"])) == ("who is talking about a video game?", "man")
    assert [qa[i]["type"] for i in ("0", "1", "2")] == ["what", "who", "what"]


def test_msrvtt_qa_malformed_record(tmp_path):
    src = broken_copy(tmp_path, "msrvtt-qa", lambda rs: rs[1].update(question=None))
    with pytest.raises(ConvertError, match=r"test_qa\.json: record \[1\]: field 'question' should be str"):
        convert("msrvtt-qa", src, tmp_path / "out")


def test_msvd_qa_maps_ids_to_youtube_clip_names(tmp_path):
    # vid1 under its YouTube name (through youtube_mapping.txt), vid1201 under its vidN name, vid2 absent
    videos = make_clips(tmp_path / "YouTubeClips", "-4wsuPCjDBc_5_15.avi", "vid1201.avi")
    summary = convert("msvd-qa", SRC["msvd-qa"], tmp_path / "out", videos)
    assert (summary.written, summary.missing) == (3, ["30936"])
    qa = read_qa(tmp_path / "out")
    assert qa["30935"]["video"] == "../YouTubeClips/-4wsuPCjDBc_5_15.avi"
    assert qa["30933"]["video"] == qa["30934"]["video"] == "../YouTubeClips/vid1201.avi"
    assert (answer(qa["30935"]), qa["30935"]["type"]) == ("slice", "what")


def test_msvd_qa_malformed_mapping_line(tmp_path):
    folder = shutil.copytree(SRC["msvd-qa"].parent, tmp_path / "msvd")
    with open(folder / "youtube_mapping.txt", "a") as f:
        f.write("no-vid-here\n")
    with pytest.raises(ConvertError, match=r"youtube_mapping\.txt: line 4: expected '<youtube clip> vid<N>'"):
        convert("msvd-qa", folder / "val_qa.json", tmp_path / "out")


def test_activitynet_qa_joins_questions_and_answers(tmp_path):
    videos = make_clips(tmp_path / "videos", "v_TIEzvhv6xaI.mp4", "v1-3/v_VXLyTLY1PAw.mkv", "_MWyhJS4KbM.mp4")
    summary = convert("activitynet-qa", SRC["activitynet-qa"], tmp_path / "out", videos)
    assert (summary.written, summary.missing) == (3, ["v_7X3wPRKuAsU_3"])
    qa = read_qa(tmp_path / "out")
    assert (question(qa["v_VXLyTLY1PAw_8"]), answer(qa["v_VXLyTLY1PAw_8"])) == ("is it day or night in the video", "day")
    assert qa["v_VXLyTLY1PAw_8"]["type"] == "Other" and qa["v_TIEzvhv6xaI_2"]["type"] == "Yes/No"
    assert qa["v_VXLyTLY1PAw_8"]["video"] == "../videos/v1-3/v_VXLyTLY1PAw.mkv"
    assert qa["v__MWyhJS4KbM_9"]["video"] == "../videos/_MWyhJS4KbM.mp4"  # saved without the v_ prefix
    # naming the answers file instead gives the same dataset
    again = convert("activitynet-qa", SRC["activitynet-qa"].with_name("val_a.json"), tmp_path / "out2", videos)
    assert again.written == 3 and read_qa(tmp_path / "out2").keys() == qa.keys()


def test_activitynet_qa_question_without_answer_and_lone_file(tmp_path):
    folder = shutil.copytree(SRC["activitynet-qa"].parent, tmp_path / "anet")
    answers = json.loads((folder / "val_a.json").read_text())
    (folder / "val_a.json").write_text(json.dumps(answers[:2] + answers[3:]))
    with pytest.raises(ConvertError, match=r"val_q\.json: record \[2\]: question_id 'v_VXLyTLY1PAw_8' has no answer"):
        convert("activitynet-qa", folder / "val_q.json", tmp_path / "out")
    (folder / "val_a.json").unlink()
    with pytest.raises(ConvertError, match=r"its partner file val_a\.json is not beside it"):
        convert("activitynet-qa", folder / "val_q.json", tmp_path / "out")


def test_videoinstruct_maps_q_and_a(tmp_path):
    videos = make_clips(tmp_path / "videos", "v_mTDRTiTnsjQ.mp4")
    summary = convert("videoinstruct", SRC["videoinstruct"], tmp_path / "out", videos)
    assert (summary.written, summary.missing) == (2, ["v_ZNVhz7ctTq0_2"])
    qa = read_qa(tmp_path / "out")
    r = qa["v_mTDRTiTnsjQ_1"]
    assert question(r) == "Can you describe the setting of the video?"
    assert answer(r).startswith("The video takes place outdoors in a park")
    assert r["video"] == "../videos/v_mTDRTiTnsjQ.mp4" and "type" not in r


def test_videoinstruct_malformed_record(tmp_path):
    src = broken_copy(tmp_path, "videoinstruct", lambda rs: rs.insert(1, ["not", "a", "record"]))
    with pytest.raises(ConvertError, match=r"VideoInstruct_Dataset\.json: record \[1\]: expected an object"):
        convert("videoinstruct", src, tmp_path / "out")


def test_csv_clips_relative_to_the_csv_by_default(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(SRC["csv"].parent, data)
    make_clips(data, "clips/kitchen.mp4", "street.webm")
    summary = convert("csv", data / "qa.csv", data)  # the dataset folder can be the CSV's own
    assert (summary.written, summary.missing) == (3, ["qa.csv:5"])
    records = [json.loads(line) for line in (data / "qa.jsonl").read_text().splitlines()]
    assert [r["video"] for r in records] == ["clips/kitchen.mp4", "clips/kitchen.mp4", "street.webm"]
    assert question(records[1]) == "Is the radio on, or is it quiet?"  # a quoted comma stays in
    assert [answer(r) for r in records] == ["a pot of soup", "the radio is playing music", "three"]
    assert [r["type"] for r in records] == ["object", "audio", "counting"]


def test_csv_clip_named_exactly_may_have_any_extension(tmp_path):
    make_clips(tmp_path, "clips/interview.mov", "clips/interview.mp4.bak")
    (tmp_path / "qa.csv").write_text("clip,question,answer\nclips/interview.mov,Who speaks?,a reporter\n"
                                     "clips/interview.mp4,Who listens?,nobody\n")
    summary = convert("csv", tmp_path / "qa.csv", tmp_path / "out")
    assert (summary.written, summary.missing) == (1, ["qa.csv:3"])
    assert read_qa(tmp_path / "out")["qa.csv:2"]["video"] == "../clips/interview.mov"


def test_csv_malformed_header_and_row(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("clip,question,reply\na.mp4,What?,yes\n")
    with pytest.raises(ConvertError, match=r"bad\.csv: line 1: .*missing answer"):
        convert("csv", bad, tmp_path / "out")
    bad.write_text("clip,question,answer\na.mp4,What?,yes\nb.mp4,Who?,\n")
    with pytest.raises(ConvertError, match=r"bad\.csv: line 3: empty answer"):
        convert("csv", bad, tmp_path / "out")


def test_bad_arguments(tmp_path):
    with pytest.raises(ConvertError, match="unknown format 'tgif-qa'"):
        convert("tgif-qa", SRC["csv"], tmp_path / "out")
    with pytest.raises(ConvertError, match="no such folder"):
        convert("csv", SRC["csv"], tmp_path / "out", tmp_path / "nowhere")
    with pytest.raises(ConvertError, match="no such file"):
        convert("csv", tmp_path / "none.csv", tmp_path / "out")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The command as a user runs it, checking too that converting never imports torch."""
    code = ("import sys; from vqa.cli import main; rc = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'vqa data convert imported torch'; sys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})


def test_cli_data_convert(tmp_path):
    videos = make_clips(tmp_path / "videos", "00000272.mp4", "00000028.mp4")
    done = run_cli("data", "convert", "music-avqa", str(SRC["music-avqa"]), str(tmp_path / "out"),
                   "--videos", str(videos))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1  # one summary line, not one line per skipped record
    assert "wrote 2 records" in done.stdout and "skipped 2" in done.stdout and "157, 28884" in done.stdout
    assert len(read_qa(tmp_path / "out")) == 2

    none = run_cli("data", "convert", "csv", str(SRC["csv"]), str(tmp_path / "empty"), "--videos", str(tmp_path))
    assert none.returncode == 1 and "no clip found" in none.stderr

    bad = tmp_path / "bad.json"
    bad.write_text('[{"video_id": "1", "q": "Why?"}]')
    failed = run_cli("data", "convert", "videoinstruct", str(bad), str(tmp_path / "out3"))
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert "bad.json: record [0]: no field 'a'" in failed.stderr
