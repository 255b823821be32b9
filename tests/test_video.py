"`gtsr video` and `gtsr evaluate-video` end to end on tiny clips made here: a simulated drive through two real GTSDB scenes (skips without GTSDB), the same drive rotated by metadata, at a variable frame rate and in 4K, and every bad input of issue 21."
import csv, io, json, os, weakref
from fractions import Fraction
from pathlib import Path
import numpy as np
import pytest
from PIL import Image
from conftest import ROOT, run_gtsr

GTSDB_MIRROR = Path(os.environ.get('GTSR_GTSDB_MIRROR', ROOT.parent/'shared'/'gtsdb'))

@pytest.fixture(scope='module')
def gtsdb(tmp_path_factory):
    "An extracted GTSDB: `$GTSR_GTSDB` (default ../data/gtsdb), else extracted from the mirror; skips when neither is there."
    folder = Path(os.environ.get('GTSR_GTSDB', ROOT.parent/'data'/'gtsdb'))
    if (folder/'TrainIJCNN2013').is_dir() or (folder/'gt.txt').is_file(): return folder
    if not (GTSDB_MIRROR/'TrainIJCNN2013.zip').is_file():
        pytest.skip(f"needs the real GTSDB scenes: none extracted at {folder} (set GTSR_GTSDB) and no mirror at {GTSDB_MIRROR}")
    from gtsr.download import download_gtsdb
    return download_gtsdb(tmp_path_factory.mktemp('gtsdb')/'gtsdb', mirror=GTSDB_MIRROR, quiet=True)

@pytest.fixture(scope='module')
def drive(gtsdb, tmp_path_factory):
    "A 4-second simulated drive through two validation scenes with large signs, its truth beside it."
    from gtsr.video_evaluate import drive_scenes, write_drive
    scenes = [s for s in drive_scenes(gtsdb, 'valid', with_signs=True) if ((s[1].x2 - s[1].x1) >= 40).all()][:2]
    return write_drive(tmp_path_factory.mktemp('drive')/'drive.mp4', scenes, seed=3)

def write_timed(path, frames, times, rotation=0):
    "An H.264 MP4 of `frames` shown at `times` (seconds): a variable frame rate, with a display rotation."
    import av
    from av.video.frame import VideoFrame
    with av.open(str(path), 'w') as out:
        s = out.add_stream('libx264', rate=25)
        s.height, s.width, s.pix_fmt, s.time_base = *frames[0].shape[:2], 'yuv420p', Fraction(1, 1000)
        if rotation: s.set_display_rotation(rotation)
        for a, t in zip(frames, times):
            f = VideoFrame.from_ndarray(np.ascontiguousarray(a), format='rgb24'); f.pts, f.time_base = round(t * 1000), Fraction(1, 1000)
            for p in s.encode(f): out.mux(p)
        for p in s.encode(): out.mux(p)
    return path

def bad_inputs(folder:Path) -> dict:
    "name -> (file, what its error says) for every unreadable input of the issue."
    import av
    from av.audio.frame import AudioFrame
    from gtsr.video import write_frames
    folder.mkdir(exist_ok=True)
    noise = np.random.default_rng(0).integers(0, 255, (30, 64, 64, 3), dtype=np.uint8)
    whole = write_frames(folder/'whole.mp4', noise).read_bytes()
    with av.open(str(folder/'plain.mp4'), 'w') as out: # no faststart: the index at the end
        s = out.add_stream('libx264', rate=25); s.width = s.height = 64; s.pix_fmt = 'yuv420p'
        for p in [p for a in noise for p in s.encode(av.VideoFrame.from_ndarray(a, format='rgb24'))] + list(s.encode()): out.mux(p)
    (folder/'truncated.mp4').write_bytes((folder/'plain.mp4').read_bytes()[:len(whole) // 2])
    with av.open(str(folder/'audio.m4a'), 'w', format='mp4') as out:
        s = out.add_stream('aac', rate=44100)
        for i in range(10):
            f = AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format='fltp', layout='mono'); f.sample_rate, f.pts = 44100, i * 1024
            for p in s.encode(f): out.mux(p)
        for p in s.encode(): out.mux(p)
    with av.open(str(folder/'zero.mp4'), 'w') as out:
        s = out.add_stream('libx264', rate=25); s.width = s.height = 64; s.pix_fmt = 'yuv420p'; out.start_encoding()
    Image.new('RGB', (64, 48), 'white').save(folder/'still.jpg')
    (folder/'notes.txt').write_text('not a video\n')
    (folder/'empty.mp4').write_bytes(b'')
    return {'truncated.mp4': 'truncated, corrupt or not a video', 'audio.m4a': 'audio only', 'zero.mp4': 'not a video',
            'still.jpg': 'still image', 'notes.txt': 'not a readable video', 'empty.mp4': 'empty file', 'missing.mp4': 'no such file'}

def test_bad_inputs_get_one_line_errors_and_the_rest_is_read(tmp_path):
    "Every unreadable input is a one-line error record (exit 2); a video truncated after its index is read as far as it goes."
    from gtsr.video import read_video_info, video_frames, write_frames
    bad = bad_inputs(tmp_path)
    whole = tmp_path/'whole.mp4' # faststart: cut in half, the first frames still decode
    (tmp_path/'half.mp4').write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
    r = run_gtsr('video', '--json', *(tmp_path/n for n in bad), tmp_path/'half.mp4', timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    records = {Path(x['path']).name: x for x in json.loads(r.stdout)}
    for name, says in bad.items():
        assert set(records[name]) == {'path', 'error'} and says in records[name]['error'] and '\n' not in records[name]['error'], (name, records[name])
    half = records['half.mp4']
    assert 'error' not in half and 0 < half['frames'] < 30 and (half['width'], half['height'], half['fps']) == (64, 64, 25)
    assert half['frames'] == sum(1 for _ in video_frames(tmp_path/'half.mp4'))
    r = run_gtsr('video', tmp_path/'notes.txt', timeout=120) # the plain listing says it on one line too
    assert r.returncode == 2 and 'not a readable video' in r.stdout + r.stderr and 'Traceback' not in r.stderr

def test_streamed_frames_are_not_kept(tmp_path):
    "`track_frames` holds no frame beyond the one it reads: memory does not grow with the video's length."
    from gtsr.detect import Detector
    from gtsr.video import track_frames
    alive, most = [0], [0]
    class Frame(np.ndarray): pass
    def frames(n):
        for i in range(n):
            a = np.full((72, 128, 3), i % 255, np.uint8).view(Frame)
            alive[0] += 1; weakref.finalize(a, lambda: alive.__setitem__(0, alive[0] - 1))
            most[0] = max(most[0], alive[0])
            yield a
    n = sum(1 for _ in track_frames(frames(300), Detector.load(), fps=25, stride=10))
    assert n == 300 and most[0] <= 3, most

def test_video_json_csv_and_out_on_a_real_drive(drive, tmp_path):
    "A sign of the drive is listed once with its name, its largest sighting inside the frame; --csv has the same rows; --out writes the three files."
    from gtsr.video_evaluate import read_truth
    truth = read_truth(drive)
    r = run_gtsr('video', '--json', drive, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    [rec] = json.loads(r.stdout)
    assert list(rec) == ['path', 'fps', 'frames', 'width', 'height', 'signs'] and (rec['fps'], rec['frames'], rec['width'], rec['height']) == (25, len(truth), 1280, 720)
    keys = ['track_id', 'class_id', 'name', 'probability', 'first_frame', 'last_frame', 'first_s', 'last_s', 'frame', 'box']
    assert rec['signs'] and all(list(s) == keys for s in rec['signs'])
    classes = {c for frame in truth for _, c, _ in frame}
    assert {s['class_id'] for s in rec['signs']} & classes, (rec['signs'], classes)
    for s in rec['signs']:
        x1, y1, x2, y2 = s['box']
        assert 0 <= x1 < x2 <= 1280 and 0 <= y1 < y2 <= 720 and s['first_frame'] <= s['frame'] <= s['last_frame'] and s['first_s'] == s['first_frame'] / 25
    r = run_gtsr('video', '--csv', drive, '--out', tmp_path/'out', timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == len(rec['signs']) and [int(x['track_id']) for x in rows] == [s['track_id'] for s in rec['signs']]
    assert [[int(x[k]) for k in ('x1', 'y1', 'x2', 'y2')] for x in rows] == [s['box'] for s in rec['signs']]
    assert json.loads((tmp_path/'out'/'drive.signs.json').read_text())['signs'] == rec['signs']
    assert Image.open(tmp_path/'out'/'drive.timeline.png').size[0] >= 800
    from gtsr.video import read_video_info
    assert read_video_info(tmp_path/'out'/'drive.annotated.mp4')[:4] == (25, len(truth), 1280, 720)
    assert not [p for p in (tmp_path/'out').iterdir() if 'partial' in p.name]

def test_rotated_variable_rate_and_4k_clips(drive, tmp_path):
    "Rotated by metadata: frames, sizes and boxes as displayed; a variable frame rate: times from the time stamps; 4K: read and found."
    from gtsr.video import video_frames
    frames = [f.pixels() for f in video_frames(drive)][:50] # the first scene's approach
    times = np.cumsum([0] + [0.03 if i % 2 else 0.05 for i in range(49)]) # 33 and 20 fps in turn
    write_timed(tmp_path/'rotated.mp4', [np.rot90(a, -1) for a in frames], np.arange(50) / 25, rotation=90) # stored portrait, displayed landscape
    write_timed(tmp_path/'vfr.mp4', frames, times)
    write_timed(tmp_path/'4k.mp4', [np.asarray(Image.fromarray(a).resize((3840, 2160))) for a in frames[::5]], np.arange(10) / 5)
    plain = write_timed(tmp_path/'plain.mp4', frames, np.arange(50) / 25)
    r = run_gtsr('video', '--json', plain, tmp_path/'rotated.mp4', tmp_path/'vfr.mp4', tmp_path/'4k.mp4', timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    plain, rotated, vfr, big = json.loads(r.stdout)
    assert plain['signs'], plain
    assert (rotated['width'], rotated['height'], rotated['frames']) == (1280, 720, 50)
    for a, b in zip(plain['signs'], rotated['signs']):
        assert a['class_id'] == b['class_id'] and np.abs(np.subtract(a['box'], b['box'])).max() <= 6, (a, b)
    assert vfr['frames'] == 50 and vfr['signs']
    for s in vfr['signs']: assert abs(s['first_s'] - times[s['first_frame']]) < 0.002 and abs(s['last_s'] - times[s['last_frame']]) < 0.002
    assert (big['width'], big['height'], big['frames']) == (3840, 2160, 10)
    assert {s['class_id'] for s in big['signs']} & {s['class_id'] for s in plain['signs']}, big
    for s in big['signs']: assert s['box'][2] <= 3840 and s['box'][3] <= 2160

def test_evaluate_video_on_the_drive(drive):
    "`gtsr evaluate-video` scores a drive against its truth: recall, precision, split, MOTA and IDF1."
    r = run_gtsr('evaluate-video', drive, '--json', timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads(r.stdout)
    assert m['signs'] >= 2 and 0 < m['recall'] <= 1 and 0 < m['precision'] <= 1 and 0 <= m['split'] <= 1 and m['idf1'] > 0
    r = run_gtsr('evaluate-video', drive.with_name('nothing.mp4'), timeout=120)
    assert r.returncode == 1 and 'no such file' in r.stderr
