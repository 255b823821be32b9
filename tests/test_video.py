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

def write_timed(path, frames, times, rotation=0, rate=25, time_base=Fraction(1, 1000)):
    "An H.264 video of `frames` shown at `times` (seconds, stored as time stamps in `time_base`): a variable frame rate, with a display rotation."
    import av
    from av.video.frame import VideoFrame
    with av.open(str(path), 'w') as out:
        s = out.add_stream('libx264', rate=rate)
        s.height, s.width, s.pix_fmt, s.time_base = *frames[0].shape[:2], 'yuv420p', time_base
        s.codec_context.time_base = time_base
        if rotation: s.set_display_rotation(rotation)
        for a, t in zip(frames, times):
            f = VideoFrame.from_ndarray(np.ascontiguousarray(a), format='rgb24'); f.pts, f.time_base = round(t / time_base), time_base
            for p in s.encode(f): out.mux(p)
        for p in s.encode(): out.mux(p)
    return path

def time_stamps(path) -> tuple:
    "(time base, frame rate the header says, the decoded frames' time stamps) of the video at `path`."
    import av
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return s.time_base, s.average_rate, [f.pts for f in c.decode(s)]

def moving_frames(n, size=(96, 160)):
    "`n` frames of a grey gradient sliding one pixel a frame: no scene cut anywhere."
    ramp = np.tile(np.linspace(40, 200, size[1] + n, dtype=np.uint8), (size[0], 1))
    return [np.repeat(ramp[:, i:i + size[1], None], 3, axis=2) for i in range(n)]

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
    assert half['header_frames'] == 30 and f"only {half['frames']} of the 30 frames its header lists" in half['warning'], half
    assert f"warning: {tmp_path/'half.mp4'}: only {half['frames']} of the 30 frames" in r.stderr, r.stderr[-2000:] # said, not silent
    r = run_gtsr('video', '--strict', tmp_path/'whole.mp4', tmp_path/'half.mp4', timeout=300) # --strict: an error, exit 2
    assert r.returncode == 2 and f"half.mp4: ERROR: {tmp_path/'half.mp4'}: only {half['frames']} of the 30 frames" in r.stdout, r.stdout + r.stderr[-2000:]
    assert 'whole.mp4 (64x64, 25 fps, 30 frames)' in r.stdout and 'warning' not in r.stderr # a whole video: no word
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
    assert list(rec) == ['path', 'fps', 'frames', 'header_frames', 'width', 'height', 'signs'] and (rec['fps'], rec['frames'], rec['width'], rec['height']) == (25, len(truth), 1280, 720)
    keys = ['track_id', 'class_id', 'name', 'traffic_sign', 'probability', 'first_frame', 'last_frame', 'first_s', 'last_s', 'frame', 'box']
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
    from gtsr.video import read_video_info, video_frames
    assert read_video_info(tmp_path/'out'/'drive.annotated.mp4')[:4] == (25, len(truth), 1280, 720)
    yellow = lambda path: [int(((a[..., 0] > 200) & (a[..., 1] > 170) & (a[..., 2] < 90)).sum()) for a in (f.pixels() for f in video_frames(path))]
    boxed = [a - b for a, b in zip(yellow(tmp_path/'out'/'drive.annotated.mp4'), yellow(drive))] # the yellow of the boxes and tags drawn
    for s in rec['signs']: # a sign's box is on every frame of its track, from its first sighting (before the tracker confirmed it)
        assert min(boxed[s['first_frame']:s['last_frame'] + 1]) > 100, (s, boxed)
    assert not [p for p in (tmp_path/'out').iterdir() if 'partial' in p.name]

def with_creation_time(src, dst, text):
    "A copy of the video `src` at `dst` whose header says it was recorded at `text`, as a camera writes it (no re-encoding)."
    import av
    with av.open(str(src)) as i, av.open(str(dst), 'w', format='mp4') as o:
        o.metadata['creation_time'] = text
        s = o.add_stream_from_template(i.streams.video[0])
        for p in i.demux(i.streams.video[0]):
            if p.dts is not None: p.stream = s; o.mux(p)
    return dst

def test_signs_placed_on_a_gps_track_and_mapped(drive, tmp_path):
    "With a GPX track made here and the video's creation time, each sign is placed where the track was at its last sighting (linear between points); --geojson maps them with OSM's traffic_sign, --out's record has the places too; a broken track, no start and a start outside the track are one-line errors with nothing written."
    import gpxpy.gpx
    from datetime import datetime, timedelta, timezone
    from gtsr.signmap import TRAFFIC_SIGNS
    dated = with_creation_time(drive, tmp_path/'dated.mp4', '2026-05-04T10:00:00.000000Z')
    t0 = datetime(2026, 5, 4, 10, tzinfo=timezone.utc)
    seconds = np.arange(-2, 10, 2.0) # a point every 2 s from 2 s before the video's start; a curve, straight between points
    lat, lon = 52.5 + 1e-4 * seconds, 13.4 + 2e-5 * seconds ** 2
    gpx = gpxpy.gpx.GPX(); trk = gpxpy.gpx.GPXTrack(); seg = gpxpy.gpx.GPXTrackSegment()
    gpx.tracks.append(trk); trk.segments.append(seg)
    seg.points += [gpxpy.gpx.GPXTrackPoint(a, o, time=t0 + timedelta(seconds=float(t))) for t, a, o in zip(seconds, lat, lon)]
    (tmp_path/'drive.gpx').write_text(gpx.to_xml())
    r = run_gtsr('video', '--json', dated, '--gpx', tmp_path/'drive.gpx', '--geojson', tmp_path/'signs.geojson', '--out', tmp_path/'out', timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    [rec] = json.loads(r.stdout)
    assert rec['signs']
    for s in rec['signs']:
        assert s['traffic_sign'] == TRAFFIC_SIGNS[s['class_id']] and s['traffic_sign'].startswith('DE:')
        assert s['time'] == (t0 + timedelta(seconds=s['last_s'])).isoformat(timespec='milliseconds').replace('+00:00', 'Z')
        assert abs(s['lat'] - np.interp(s['last_s'], seconds, lat)) < 1e-7 and abs(s['lon'] - np.interp(s['last_s'], seconds, lon)) < 1e-7, s
    assert json.loads((tmp_path/'out'/'dated.signs.json').read_text())['signs'] == rec['signs']
    geo = json.loads((tmp_path/'signs.geojson').read_text())
    assert geo['type'] == 'FeatureCollection' and len(geo['features']) == len(rec['signs'])
    for f, s in zip(geo['features'], rec['signs']):
        assert f['geometry'] == {'type': 'Point', 'coordinates': [s['lon'], s['lat']]} and f['properties']['traffic_sign'] == s['traffic_sign']
    (tmp_path/'broken.gpx').write_text(gpx.to_xml()[:200])
    for args, says in [((drive, '--gpx', tmp_path/'broken.gpx'), 'not a readable GPX file'), ((drive, '--gpx', tmp_path/'drive.gpx'), 'has no creation time'),
                       ((drive, '--gpx', tmp_path/'drive.gpx', '--start', '2026-05-04T10:01:00Z'), 'outside the GPS track'),
                       ((dated, '--gpx', tmp_path/'drive.gpx', '--start', '2026-05-04T09:00:00+02:00'), 'outside the GPS track')]:
        r = run_gtsr('video', *args, '--geojson', tmp_path/'map.geojson', '--out', tmp_path/'none', timeout=120)
        assert r.returncode == 1 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1 and 'Traceback' not in r.stderr, (says, r.stderr)
        assert not (tmp_path/'map.geojson').exists() and not (tmp_path/'none').exists()

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
    shown = next(iter(video_frames(tmp_path/'rotated.mp4'))).pixels()
    assert shown.shape == frames[0].shape and np.abs(shown.astype(int) - frames[0]).mean() < 4 # displayed upright, not stored portrait
    # x264's output depends on the machine's threads, so a marginal sign may come and go; each sign found in both is in the same place
    same = [b for b in rotated['signs'] if any(a['class_id'] == b['class_id'] and np.abs(np.subtract(a['box'], b['box'])).max() <= 6 for a in plain['signs'])]
    assert rotated['signs'] and len(same) >= len(rotated['signs']) - 1 and len(same) >= len(plain['signs']) - 1, (plain['signs'], rotated['signs'])
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
    # two scenes chosen for their large signs (40 px or more): every one is found, named and tracked once
    assert (m['signs'], m['named'], m['tracks'], m['real']) == (4, 4, 4, 4), m
    assert m['recall'] == m['precision'] == m['idf1'] == 1 and m['split'] == 0, m
    r = run_gtsr('evaluate-video', drive.with_name('nothing.mp4'), timeout=120)
    assert r.returncode == 1 and 'no such file' in r.stderr

RATES = {'ntsc.mp4': (Fraction(30000, 1001), Fraction(1, 30000)), 'phone.mp4': (Fraction(1507, 50), Fraction(1, 90000)), # 29.97, 30.14
         'fast.mkv': (Fraction(60000, 1001), Fraction(1, 1000))} # 59.94

def test_out_keeps_rational_and_variable_rates_and_their_time_stamps(tmp_path):
    "`gtsr video --out` at 29.97, 30.14 and 59.94 fps and at a variable rate: the annotated video has the source's frames at the same time stamps in the same time base."
    frames = moving_frames(24)
    clips = {name: write_timed(tmp_path/name, frames, np.arange(24) / rate, rate=rate, time_base=tb) for name, (rate, tb) in RATES.items()}
    vfr_times = np.cumsum([0] + [0.03 if i % 2 else 0.05 for i in range(23)]) # 33 and 20 fps in turn
    clips['vfr.mp4'] = write_timed(tmp_path/'vfr.mp4', frames, vfr_times)
    r = run_gtsr('video', '--json', '--out', tmp_path/'out', *clips.values(), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    records = {Path(x['path']).name: x for x in json.loads(r.stdout)}
    for name, path in clips.items():
        time_base, rate, pts = time_stamps(path)
        assert 'error' not in records[name] and records[name]['frames'] == 24 and records[name]['fps'] == round(float(rate), 3), records[name]
        annotated = tmp_path/'out'/f'{path.stem}.annotated.mp4'
        out_base, out_rate, out_pts = time_stamps(annotated)
        assert (out_base, out_pts) == (time_base, [p - pts[0] for p in pts]), (name, out_base, time_base, out_pts, pts)
        assert abs(out_rate / rate - 1) < 0.005, (name, out_rate, rate) # the average rate a demuxer works out (Matroska's from times rounded to 1 ms)
    assert not [p for p in (tmp_path/'out').iterdir() if 'partial' in p.name]

def test_tracker_measures_motion_in_seconds():
    "Frames missing from a variable-rate video (a gap of 0.96 s between detector frames) do not split a moving sign: ByteTrack is given each frame's time."
    from gtsr.detect import SignDetection
    from gtsr.tracking import SignTracker
    tracker = SignTracker(fps=25, stride=8)
    for frame, seconds in [(0, 0.0), (8, 0.32), (16, 0.64), (24, 0.96), (48, 1.92), (56, 2.24)]:
        x = 100 + 150 * seconds # 150 px a second to the right
        tracker.update(frame, seconds, [SignDetection([x, 100, x + 40, 140], 14, 'Stop', 0.95, 0.9, [])])
    signs = tracker.finish()
    assert [[s.frame for s in t.sightings] for t in signs] == [[0, 8, 16, 24, 48, 56]], signs

def test_detector_reads_frames_evenly_in_time_at_a_variable_rate(tmp_path):
    "At 30 fps and then 10 fps, the detector reads a frame every 0.1 s (every 3rd frame, then every frame), not every 3rd frame throughout."
    from gtsr.detect import Detector
    from gtsr.video import track_frames
    times = np.r_[np.arange(30) / 30, 1 + np.arange(20) / 10]
    clip = write_timed(tmp_path/'slower.mp4', moving_frames(50), times)
    read = [tf.frame.seconds for tf in track_frames(clip, Detector.load(), fps=30, stride=3) if tf.linked is not None]
    assert np.allclose(np.diff(read), 0.1, atol=0.002), read
    assert len(read) == 30, read

def test_a_folder_of_photos_one_a_second_is_one_sequence(drive, tmp_path):
    "The drive as interval shots (every 25th frame: one a second, JPEG with EXIF capture times and zone): each of its signs is named, with the photo it is largest in; --gpx places them from the first photo's capture time; --out writes the annotated sequence at the photos' times."
    import gpxpy.gpx
    from datetime import datetime, timedelta, timezone
    from gtsr.video import video_frames, read_video_info
    from gtsr.video_evaluate import read_truth
    truth, shots = read_truth(drive), tmp_path/'shots'
    shots.mkdir()
    for f in video_frames(drive):
        if f.index % 25: continue
        exif = Image.Exif(); ifd = exif.get_ifd(0x8769)
        ifd[36867], ifd[36881] = f'2026:05:04 12:00:{f.index // 25:02d}', '+02:00' # local time, 10:00 UTC
        Image.fromarray(f.pixels()).save(shots/f'IMG_{f.index // 25:04d}.jpg', exif=exif, quality=92)
    t0 = datetime(2026, 5, 4, 10, tzinfo=timezone.utc)
    gpx = gpxpy.gpx.GPX(); trk = gpxpy.gpx.GPXTrack(); seg = gpxpy.gpx.GPXTrackSegment(); gpx.tracks.append(trk); trk.segments.append(seg)
    seg.points += [gpxpy.gpx.GPXTrackPoint(52.5 + 1e-4 * t, 13.4, time=t0 + timedelta(seconds=t)) for t in range(-2, 8)]
    (tmp_path/'drive.gpx').write_text(gpx.to_xml())
    r = run_gtsr('video', '--json', shots, '--gpx', tmp_path/'drive.gpx', '--out', tmp_path/'out', timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    [rec] = json.loads(r.stdout)
    assert (rec['path'], rec['frames'], rec['fps'], rec['width'], rec['height']) == (str(shots), 4, 1, 1280, 720), rec
    classes = {c for k in range(0, len(truth), 25) for _, c, _ in truth[k]}
    assert classes <= {s['class_id'] for s in rec['signs']}, (rec['signs'], classes) # every sign of the photos, named
    for s in rec['signs']:
        assert s['photo'] == str(shots/f"IMG_{s['frame']:04d}.jpg") and s['first_s'] == s['first_frame']
        assert s['time'] == (t0 + timedelta(seconds=s['last_s'])).isoformat(timespec='milliseconds').replace('+00:00', 'Z')
        assert abs(s['lat'] - (52.5 + 1e-4 * s['last_s'])) < 1e-7
    annotated = read_video_info(tmp_path/'out'/'shots.annotated.mp4')
    assert (annotated.frames, annotated.width, annotated.height) == (4, 1280, 720)
    assert [f.seconds for f in video_frames(tmp_path/'out'/'shots.annotated.mp4')] == [0, 1, 2, 3]
