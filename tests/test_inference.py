"`Classifier` on every kind of input, `gtsr predict` output and exit codes, ONNX parity, and the shipped model."
import csv, io, json, os, shutil, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
from PIL import Image
from conftest import ROOT, run_gtsr
from gtsr.data import ImageError, load_gtsrb
from gtsr.inference import Classifier
from gtsr.modelfile import BACKENDS, default_model_path
from test_train_evaluate import tiny_model, synthetic_data  # noqa: F401 (fixtures)

@pytest.fixture(scope='module')
def clf(tiny_model): return Classifier.load(tiny_model)

@pytest.fixture(scope='module')
def sign(synthetic_data) -> Path: return Path(load_gtsrb(synthetic_data).query("split == 'test'").path.iloc[0])

def save(img, path, **kw): img.save(path, **kw); return path

def good_inputs(sign:Path, tmp:Path) -> dict:
    "The same sign in every mode, size and container a user may have."
    rgb = Image.open(sign).convert('RGB')
    big = rgb.resize((4000, 3000))
    exif = Image.Exif(); exif[0x0112] = 6  # rotated 90 degrees
    a16 = (np.asarray(rgb.convert('L'), dtype=np.uint16) * 257)
    return {
        'grayscale': save(rgb.convert('L'), tmp/'gray.png'),
        'rgba': save(rgb.convert('RGBA'), tmp/'rgba.png'),
        'palette': save(rgb.convert('P'), tmp/'palette.gif'),
        '16-bit': save(Image.fromarray(a16), tmp/'16bit.png'),
        'cmyk': save(rgb.convert('CMYK'), tmp/'cmyk.jpg'),
        'exif-rotated': save(rgb.rotate(90, expand=True), tmp/'exif.jpg', exif=exif),
        '4000x3000': save(big, tmp/'big.jpg', quality=90),
        'webp': save(rgb, tmp/'sign.webp', lossless=True), 'bmp': save(rgb, tmp/'sign.bmp'), 'ppm': sign,
        'bytes': sign.read_bytes(), 'pil': rgb, 'numpy': np.asarray(rgb), 'numpy-gray-uint16': a16,
    }

def test_every_kind_of_good_input(clf, sign, tmp_path):
    expected = clf.predict(sign, 1)[0].class_id
    for kind, x in good_inputs(sign, tmp_path).items():
        preds = clf.predict(x, topk=5)
        assert len(preds) == 5 and all(isinstance(p.name, str) for p in preds), kind
        assert abs(sum(p.probability for p in clf.predict(x, 43)) - 1) < 1e-3, kind
        if kind not in ('grayscale', 'palette', '16-bit', 'numpy-gray-uint16', 'cmyk', '4000x3000', 'exif-rotated'):
            assert preds[0].class_id == expected, kind

def test_exif_orientation_is_applied(tmp_path):
    from gtsr.data import read_image
    exif = Image.Exif(); exif[0x0112] = 6
    path = save(Image.new('RGB', (40, 20), 'red'), tmp_path/'r.jpg', exif=exif)
    assert read_image(path).size == (20, 40)

def bad_inputs(tmp:Path, sign:Path) -> dict:
    png = io.BytesIO(); Image.open(sign).convert('RGB').resize((64, 64)).save(png, 'PNG')
    bomb = tmp/'bomb.png'
    Image.new('1', (12000, 12000)).save(bomb)  # 144 megapixels, 20 kB on disk
    return {'zero-byte': save_bytes(tmp/'empty.png', b''), 'not-an-image': save_bytes(tmp/'notes.txt', b'hello world'),
            'truncated': save_bytes(tmp/'cut.png', png.getvalue()[:len(png.getvalue()) // 2]),
            'corrupt': save_bytes(tmp/'corrupt.jpg', b'\xff\xd8\xff\xe0' + os.urandom(2000)),
            'bomb': bomb, 'missing': tmp/'missing.png', 'empty-bytes': b'', 'bad-array': np.zeros((3, 3, 7))}

def save_bytes(path, data): path.write_bytes(data); return path

def test_every_kind_of_bad_input_raises_image_error(clf, sign, tmp_path):
    for kind, x in bad_inputs(tmp_path, sign).items():
        with pytest.raises(ImageError) as e: clf.predict(x)
        if isinstance(x, Path): assert x.name in str(e.value), kind

def test_predict_table_json_csv_and_exit_codes(tiny_model, sign, tmp_path):
    folder = tmp_path/'imgs'; folder.mkdir()
    shutil.copy(sign, folder/'a.ppm'); save(Image.open(sign), folder/'b.png')
    r = run_gtsr('predict', '--model', tiny_model, folder, '--topk', '3')
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith('file') and len(lines) == 3
    r = run_gtsr('predict', '--model', tiny_model, '--json', str(folder/'*.png'), folder/'a.ppm')
    out = json.loads(r.stdout)
    assert [Path(o['path']).name for o in out] == ['b.png', 'a.ppm'] and len(out[0]['predictions']) == 5
    assert set(out[0]['predictions'][0]) == {'class_id', 'name', 'probability'}
    assert set(out[0]) == {'path', 'predictions', 'verdict'} and out[0]['verdict'] in ('sign', 'not_sure', 'not_a_sign')
    (folder/'junk.png').write_bytes(b'nope')
    r = run_gtsr('predict', '--model', tiny_model, '--csv', '--topk', '2', folder)
    assert r.returncode == 2 and '1 of 3 files could not be classified' in r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == 2 * 2 + 1
    assert [row for row in rows if row['error']][0]['path'].endswith('junk.png')
    r = run_gtsr('predict', '--model', tiny_model, folder/'junk.png', folder/'a.ppm')
    assert r.returncode == 2 and 'ERROR' in r.stdout and 'a.ppm' in r.stdout

def test_onnx_path_imports_neither_torch_nor_fastai(sign, tmp_path):
    "`gtsr predict`, `gtsr detect`, the app (classifier, detector, reference pictures) and the API on ONNX, in a fresh interpreter: no torch, fastai, torchvision or pandas."
    code = ("import sys\nfrom fastapi.testclient import TestClient\nfrom gtsr.cli import main\n"
            "from gtsr.app import app_classifier, app_detector, classify_upload, reference_pictures\nfrom gtsr.serve import create_app\n"
            f"for backend in ('onnx', 'onnx-int8'): assert main(['predict', '--backend', backend, {str(sign)!r}]) == 0\n"
            f"assert main(['detect', {str(sign)!r}]) == 0\n"
            f"classify_upload('sign', open({str(sign)!r}, 'rb').read(), app_classifier(), detector=app_detector())\n"
            f"assert reference_pictures({str(tmp_path/'no-data')!r}) == {{}} # the app page's call where no GTSRB is downloaded\n"
            f"with TestClient(create_app()) as client: assert client.post('/v1/classify', files=[('files', open({str(sign)!r}, 'rb'))]).status_code == 200\n"
            "print(sorted(m for m in ('torch', 'fastai', 'torchvision', 'pandas') if m in sys.modules))")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == '[]', r.stdout

def test_onnx_parity_on_synthetic(tiny_model, synthetic_data, tmp_path):
    work = tmp_path/'m'; shutil.copytree(tiny_model.parent, work)
    r = run_gtsr('export', '--model', work/'model.pkl', '--data', synthetic_data)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (work/'model.onnx').is_file() and (work/'model-int8.onnx').is_file()
    from gtsr.evaluate import parity
    table = parity(synthetic_data, work/'model.pkl')
    assert list(table.index) == BACKENDS
    assert table.loc['onnx', 'agreement_with_fastai'] == 1.0
    assert table.loc['onnx-int8', 'agreement_with_fastai'] >= 0.9
    images = list(load_gtsrb(synthetic_data).query("split == 'test'").path)
    p = {b: Classifier.load(work/'model.pkl', b).probabilities(images) for b in BACKENDS}
    assert np.abs(p['onnx'] - p['fastai']).max() < 1e-4

def test_shipped_model_loads_and_is_verified():
    path = default_model_path()
    assert path.is_file(), f"the shipped model is missing at {path}"
    clf = Classifier.load(path)
    assert clf.size == json.loads((path.parent/'manifest.json').read_text())['model.pkl']['size']

def test_shipped_model_on_real_test_images(real_data):
    "The shipped model on 500 real test images (the full figure is in gtsr/models/README.md)."
    test = load_gtsrb(real_data).query("split == 'test'").sample(500, random_state=0)
    for backend in BACKENDS:
        clf = Classifier.load(None, backend)
        predicted = [p[0].class_id for p in clf.predict_batch(list(test.path), topk=1)]
        accuracy = np.mean(np.array(predicted) == test.class_id.to_numpy())
        assert accuracy > 0.98, (backend, accuracy)

def test_a_file_that_passes_its_checksum_but_is_no_onnx_model_is_one_line(tmp_path):
    "A junk file listed in its manifest (so it passes the checksum): predict, detect and serve refuse it in one line, no traceback."
    from gtsr.modelfile import record_in_manifest
    fake, finder = tmp_path/'model.onnx', tmp_path/'finder.onnx'
    for f in (fake, finder): f.write_bytes(b'not a model, yet listed in its manifest')
    record_in_manifest(fake, arch='signnet', size=32); record_in_manifest(finder, verifier=fake.name)
    img = tmp_path/'a.png'; Image.new('RGB', (64, 64), (200, 30, 30)).save(img)
    for args in (['predict', '--model', fake, '--backend', 'onnx', img], ['detect', '--detector', finder, img],
                 ['serve', '--model', fake, '--backend', 'onnx', '--port', '1']):
        r = run_gtsr(*args, timeout=120)
        assert r.returncode == 1, (args, r.returncode, r.stderr[-2000:])
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and 'is not an ONNX model onnxruntime can load (Protobuf parsing failed.)' in lines[0], (args, r.stderr[-2000:])
