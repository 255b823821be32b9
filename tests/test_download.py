"The `gtsr download` command and `load_gtsrb` on each error path, and one integration run on the real mirror."
import os, shutil, signal, subprocess, sys, time, zipfile
from pathlib import Path
import pytest
from conftest import run_gtsr, start_gtsr_interruptible
from gtsr.data import DatasetError, load_gtsrb, track_split
from gtsr.download import COMPLETE_MARKER, OFFICIAL_ARCHIVES
from gtsr.synthetic import make_synthetic_archives
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
