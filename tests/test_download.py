"The `gtsr download` command and `load_gtsrb` on each error path, and one integration run on the real mirror (GTSRB and GTSDB)."
import functools, http.server, json, os, shutil, signal, subprocess, sys, threading, time, zipfile
from pathlib import Path
import pytest
from conftest import ROOT, run_gtsr, start_gtsr_interruptible
from gtsr.data import DatasetError, load_gtsrb, track_split
from gtsr.gtsdb import gtsdb_scenes, gtsdb_split, load_gtsdb
from gtsr.download import COMPLETE_MARKER, GTSDB_ARCHIVE, OFFICIAL_ARCHIVES, download_gtsdb
from gtsr.synthetic import make_synthetic_archives, make_synthetic_gtsdb_archive
from gtsr.data import file_digest

def leftovers(dest:Path) -> list:
    "Anything a failed run left at or beside `dest`."
    return [p.name for p in dest.parent.iterdir() if p.name in (dest.name, f'.{dest.name}.partial')]

def copy_mirror(src, dst) -> Path:
    shutil.copytree(src, dst); return dst

def rewrite_sums(mirror:Path):
    (mirror/'SHA256SUMS').write_text(''.join(f'{file_digest(mirror/n)}  {n}\n' for n in OFFICIAL_ARCHIVES.values()))

def test_download_from_mirror_then_nothing_to_do(synthetic_mirror, tmp_path):
    dest = tmp_path/'gtsrb'
    r = run_gtsr('download', '--mirror', synthetic_mirror, '--dest', dest)
    assert r.returncode == 0, r.stderr
    assert (dest/COMPLETE_MARKER).is_file()
    assert len(load_gtsrb(dest)) == 43*2*3 + 43
    r = run_gtsr('download', '--mirror', synthetic_mirror, '--dest', dest)
    assert r.returncode == 0 and 'already' in r.stdout and 'nothing to do' in r.stdout

def test_checksum_mismatch_names_the_file(synthetic_mirror, tmp_path):
    mirror = copy_mirror(synthetic_mirror, tmp_path/'m')
    with open(mirror/OFFICIAL_ARCHIVES['test'], 'ab') as f: f.write(b'tampered')
    dest = tmp_path/'gtsrb'
    r = run_gtsr('download', '--mirror', mirror, '--dest', dest)
    assert r.returncode == 1
    assert 'Checksum mismatch' in r.stderr and OFFICIAL_ARCHIVES['test'] in r.stderr
    assert 'Traceback' not in r.stderr
    assert leftovers(dest) == []

def test_corrupt_zip_names_the_file(synthetic_mirror, tmp_path):
    mirror = copy_mirror(synthetic_mirror, tmp_path/'m')
    (mirror/OFFICIAL_ARCHIVES['test_labels']).write_bytes(b'not a zip at all')
    rewrite_sums(mirror)
    dest = tmp_path/'gtsrb'
    r = run_gtsr('download', '--mirror', mirror, '--dest', dest)
    assert r.returncode == 1 and f"{OFFICIAL_ARCHIVES['test_labels']} is not a valid zip" in r.stderr
    assert leftovers(dest) == []

def test_truncated_member_midway_leaves_nothing(synthetic_mirror, tmp_path):
    "A zip whose last member is damaged fails after extracting the others: nothing may remain."
    mirror = copy_mirror(synthetic_mirror, tmp_path/'m')
    arch = mirror/OFFICIAL_ARCHIVES['train']
    with zipfile.ZipFile(arch) as z: last = z.infolist()[-1]
    data = bytearray(arch.read_bytes())
    start = last.header_offset + 30 + len(last.filename.encode()) + len(last.extra)
    data[start:start + 8] = b'\xff' * 8
    arch.write_bytes(bytes(data)); rewrite_sums(mirror)
    dest = tmp_path/'gtsrb'
    r = run_gtsr('download', '--mirror', mirror, '--dest', dest)
    assert r.returncode == 1 and OFFICIAL_ARCHIVES['train'] in r.stderr, r.stderr
    assert leftovers(dest) == []

def big_mirror(root:Path, n:int=30000) -> Path:
    "A mirror whose training archive holds `n` files, so extraction takes a few seconds."
    mirror = make_synthetic_archives(root)
    arch = mirror/OFFICIAL_ARCHIVES['train']
    with zipfile.ZipFile(arch, 'a') as z:
        for i in range(n): z.writestr(f'GTSRB/Final_Training/Images/00000/99999_{i:05d}.txt', 'filler')
    rewrite_sums(mirror)
    return mirror

def test_interrupted_extraction_leaves_nothing(tmp_path):
    mirror, dest = big_mirror(tmp_path/'m'), tmp_path/'gtsrb'
    p = start_gtsr_interruptible('download', '--mirror', mirror, '--dest', dest, '--quiet')
    staging = tmp_path/'.gtsrb.partial'/'GTSRB'
    deadline = time.time() + 60
    while not staging.exists() and time.time() < deadline and p.poll() is None: time.sleep(0.05)
    assert p.poll() is None, "extraction finished before it could be interrupted"
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and 'interrupted' in err
    assert leftovers(dest) == []

def test_killed_run_is_cleaned_up_by_the_next(synthetic_mirror, tmp_path):
    stale = tmp_path/'.gtsrb.partial'; (stale/'GTSRB').mkdir(parents=True); (stale/'junk').write_text('x')
    r = run_gtsr('download', '--mirror', synthetic_mirror, '--dest', tmp_path/'gtsrb', '--quiet')
    assert r.returncode == 0, r.stderr
    assert not stale.exists() and not (tmp_path/'gtsrb'/'junk').exists()

def test_existing_foreign_folder_is_not_touched(synthetic_mirror, tmp_path):
    dest = tmp_path/'gtsrb'; dest.mkdir(); (dest/'mine.txt').write_text('keep me')
    r = run_gtsr('download', '--mirror', synthetic_mirror, '--dest', dest)
    assert r.returncode == 1 and 'not a complete gtsr download' in r.stderr
    assert (dest/'mine.txt').read_text() == 'keep me'

def test_missing_kaggle_credentials(tmp_path):
    env = {k: '' for k in ('KAGGLE_API_TOKEN', 'KAGGLE_USERNAME', 'KAGGLE_KEY')}
    env.update(HOME=str(tmp_path), KAGGLE_CONFIG_DIR=str(tmp_path/'none'))
    r = run_gtsr('download', '--source', 'kaggle', '--dest', tmp_path/'gtsrb', env=env)
    assert r.returncode == 1
    assert 'Kaggle credentials not found' in r.stderr and 'KAGGLE_API_TOKEN' in r.stderr and 'kaggle.json' in r.stderr
    assert 'Traceback' not in r.stderr and len(r.stderr.splitlines()) < 12
    assert leftovers(tmp_path/'gtsrb') == []

def test_kaggle_layout_from_mirror(tmp_path):
    mirror = make_synthetic_archives(tmp_path/'km', layout='kaggle')
    r = run_gtsr('download', '--source', 'kaggle', '--mirror', mirror, '--dest', tmp_path/'gtsrb', '--quiet')
    assert r.returncode == 0, r.stderr
    df = load_gtsrb(tmp_path/'gtsrb')
    assert set(df.split) == {'train', 'test'} and df.class_id.nunique() == 43
    assert (tmp_path/'gtsrb'/'Meta.csv').is_file()

def test_no_network_is_a_clear_error(tmp_path):
    r = run_gtsr('download', '--dest', tmp_path/'gtsrb', env={'GTSR_OFFICIAL_URL': 'http://127.0.0.1:9/'})
    assert r.returncode == 1 and 'Could not download' in r.stderr and '--mirror' in r.stderr
    assert 'Traceback' not in r.stderr and leftovers(tmp_path/'gtsrb') == []

def test_missing_mirror_archive(synthetic_mirror, tmp_path):
    mirror = copy_mirror(synthetic_mirror, tmp_path/'m'); (mirror/OFFICIAL_ARCHIVES['test']).unlink()
    r = run_gtsr('download', '--mirror', mirror, '--dest', tmp_path/'gtsrb')
    assert r.returncode == 1 and f"lacks {OFFICIAL_ARCHIVES['test']}" in r.stderr

@pytest.mark.parametrize('make', [lambda p: p, lambda p: p/'missing', lambda p: (p/'a.txt').write_text('x') and p])
def test_wrong_or_empty_folder(tmp_path, make):
    with pytest.raises(DatasetError, match='Expected an extracted GTSRB folder'): load_gtsrb(make(tmp_path))

def test_real_mirror_integration(real_data):
    "Extracted from ../shared/gtsrb: the figures the benchmark documents."
    df = load_gtsrb(real_data)
    train = df[df.split == 'train']
    assert len(train) == 39209
    assert train.class_id.nunique() == 43 and df.class_id.nunique() == 43
    assert train.track.nunique() == 1307
    assert (df.split == 'test').sum() == 6282 and df[df.split == 'test'].class_id.notna().all()
    trn, val = track_split(df)
    assert not set(trn.track) & set(val.track)
    assert len(trn) + len(val) == 39209 and val.class_id.nunique() == 43
    assert 0.15 < len(val) / len(train) < 0.25

# GTSDB, the road scenes: `gtsr download --dataset gtsdb`

GTSDB_MIRROR = Path(os.environ.get('GTSR_GTSDB_MIRROR', ROOT.parent/'shared'/'gtsdb'))

@pytest.fixture(scope='module')
def gtsdb_mirror(tmp_path_factory):
    "A synthetic TrainIJCNN2013.zip (8 scenes, 2 without a sign) with its SHA256SUMS."
    return make_synthetic_gtsdb_archive(tmp_path_factory.mktemp('gtsdb_mirror'), scenes=8, sign_free=2)

def test_gtsdb_download_from_mirror_then_nothing_to_do(gtsdb_mirror, tmp_path):
    dest = tmp_path/'gtsdb'
    r = run_gtsr('download', '--dataset', 'gtsdb', '--mirror', gtsdb_mirror, '--dest', dest)
    assert r.returncode == 0, r.stderr
    assert '8 scenes' in r.stdout and '2 scenes without a sign' in r.stdout
    signs, scenes = load_gtsdb(dest), gtsdb_scenes(dest)
    assert len(scenes) == 8 and (scenes.signs == 0).sum() == 2 and scenes.signs.sum() == len(signs) > 0
    assert all(Path(p).suffix == '.ppm' and Path(p).is_file() for p in signs.path)
    marker = json.loads((dest/COMPLETE_MARKER).read_text())
    assert marker['signs'] == len(signs) and marker['archives'][GTSDB_ARCHIVE] == file_digest(gtsdb_mirror/GTSDB_ARCHIVE)
    r = run_gtsr('download', '--dataset', 'gtsdb', '--mirror', gtsdb_mirror, '--dest', dest)
    assert r.returncode == 0 and 'GTSDB is already in' in r.stdout and 'nothing to do' in r.stdout

def test_gtsdb_corrupted_archive_is_refused_and_leaves_nothing(gtsdb_mirror, tmp_path):
    mirror, dest = copy_mirror(gtsdb_mirror, tmp_path/'m'), tmp_path/'gtsdb'
    arch = mirror/GTSDB_ARCHIVE
    data = bytearray(arch.read_bytes()); data[len(data) // 2] ^= 0xff; arch.write_bytes(bytes(data))
    r = run_gtsr('download', '--dataset', 'gtsdb', '--mirror', mirror, '--dest', dest)
    assert r.returncode == 1 and 'Checksum mismatch' in r.stderr and GTSDB_ARCHIVE in r.stderr
    assert 'Traceback' not in r.stderr and leftovers(dest) == []
    (mirror/'SHA256SUMS').write_text(f'{file_digest(arch)}  {GTSDB_ARCHIVE}\n')
    r = run_gtsr('download', '--dataset', 'gtsdb', '--mirror', mirror, '--dest', dest)
    assert r.returncode == 1 and f'{GTSDB_ARCHIVE} is not a valid zip' in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert leftovers(dest) == []

def test_gtsdb_archive_with_a_bad_gt_line_leaves_nothing(tmp_path):
    "A sound zip whose gt.txt names a scene that is not there is not GTSDB: refused after extraction, nothing kept."
    mirror = make_synthetic_gtsdb_archive(tmp_path/'m', scenes=3, sign_free=1)
    arch, bad = mirror/GTSDB_ARCHIVE, tmp_path/'bad.zip'
    with zipfile.ZipFile(arch) as z, zipfile.ZipFile(bad, 'w') as out:
        for m in z.infolist(): out.writestr(m, '00009.ppm;1;2;30;40;14\n' if m.filename.endswith('gt.txt') else z.read(m))
    os.replace(bad, arch); (mirror/'SHA256SUMS').unlink()
    dest = tmp_path/'gtsdb'
    r = run_gtsr('download', '--dataset', 'gtsdb', '--mirror', mirror, '--dest', dest)
    assert r.returncode == 1 and 'did not contain GTSDB' in r.stderr and 'no image of scene 00009' in r.stderr, r.stderr
    assert 'is not verified' in r.stdout and leftovers(dest) == []

class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass

def test_gtsdb_from_the_server_is_said_to_be_unverified(gtsdb_mirror, tmp_path):
    "The official path over HTTP (a local server standing in for the benchmark's): no published checksum, so it says so and records the sha256."
    handler = functools.partial(QuietHandler, directory=str(gtsdb_mirror))
    with http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        dest = tmp_path/'gtsdb'
        r = run_gtsr('download', '--dataset', 'gtsdb', '--dest', dest, env={'GTSR_GTSDB_URL': f'http://127.0.0.1:{server.server_port}/'})
        server.shutdown()
    assert r.returncode == 0, r.stderr
    assert f'publishes no checksum for {GTSDB_ARCHIVE}: not verified' in r.stdout
    assert json.loads((dest/COMPLETE_MARKER).read_text())['archives'][GTSDB_ARCHIVE] == file_digest(gtsdb_mirror/GTSDB_ARCHIVE)
    assert len(gtsdb_scenes(dest)) == 8

def test_gtsdb_no_network_is_a_clear_error(tmp_path):
    r = run_gtsr('download', '--dataset', 'gtsdb', '--dest', tmp_path/'gtsdb', env={'GTSR_GTSDB_URL': 'http://127.0.0.1:9/'})
    assert r.returncode == 1 and f'Could not download http://127.0.0.1:9/{GTSDB_ARCHIVE}' in r.stderr and '--mirror' in r.stderr
    assert 'Traceback' not in r.stderr and leftovers(tmp_path/'gtsdb') == []

def test_gtsdb_real_mirror_integration(tmp_path):
    "Downloaded from ../shared/gtsdb: the figures the benchmark documents, its JPEG scenes matched to gt.txt's .ppm names."
    if not (GTSDB_MIRROR/GTSDB_ARCHIVE).is_file():
        pytest.skip(f"needs the real GTSDB archive: no {GTSDB_ARCHIVE} at {GTSDB_MIRROR} (set GTSR_GTSDB_MIRROR)")
    dest = download_gtsdb(tmp_path/'gtsdb', mirror=GTSDB_MIRROR, quiet=True)
    signs, scenes = load_gtsdb(dest), gtsdb_scenes(dest)
    assert len(signs) == 852 and len(scenes) == 600
    assert signs.class_id.between(0, 42).all() and signs.path.isin(scenes.path).all()
    sign_free = (scenes.signs == 0).sum()
    assert sign_free == 94 and 0.12 < sign_free / len(scenes) < 0.2 # about 1 in 6
    train, valid = gtsdb_split(scenes)
    assert not set(train.path) & set(valid.path) and len(train) + len(valid) == 600
    assert 0.18 < len(valid) / 600 < 0.22 and (valid.signs == 0).sum() == round(94 * 0.2)
