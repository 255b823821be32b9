"`gtsr train` and `gtsr evaluate` end to end on synthetic data; resume; checksum refusal; pretrained without weights."
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path
import pytest
from conftest import run_gtsr, start_gtsr_interruptible
from gtsr.synthetic import make_synthetic_gtsrb

TINY = ['--arch', 'signnet', '--no-pretrained', '--width', '8', '--bs', '32']

@pytest.fixture(scope='session')
def synthetic_data(tmp_path_factory):
    return make_synthetic_gtsrb(tmp_path_factory.mktemp('syn')/'gtsrb', tracks_per_class=3, images_per_track=4)

@pytest.fixture(scope='session')
def tiny_model(synthetic_data, tmp_path_factory):
    "A signnet trained for a few epochs on the synthetic data through the command line."
    out = tmp_path_factory.mktemp('run')
    r = run_gtsr('train', '--data', synthetic_data, '--out', out, '--epochs', '8', '--all-train', '--members', '1', *TINY,
                 env={'GTSR_CACHE': str(tmp_path_factory.mktemp('cache'))})
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'model:' in r.stdout
    return out/'model.pkl'

def test_train_exports_model_and_manifest(tiny_model):
    manifest = json.loads((tiny_model.parent/'manifest.json').read_text())
    from gtsr.data import file_digest
    assert manifest['model.pkl']['sha256'] == file_digest(tiny_model)
    assert manifest['model.pkl']['arch'] == 'signnet'

def test_evaluate_writes_metrics_and_figures(tiny_model, synthetic_data, tmp_path):
    r = run_gtsr('evaluate', '--data', synthetic_data, '--model', tiny_model, '--out', tmp_path/'eval')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'top-1 accuracy' in r.stdout
    m = json.loads((tmp_path/'eval'/'metrics.json').read_text())
    assert m['images'] == 43 and 0 <= m['accuracy'] <= 1 and len(m['per_class']) == 43
    assert {'macro_precision', 'macro_recall', 'macro_f1', 'ece'} <= set(m)
    for png in ['confusion_matrix', 'most_confused', 'top_losses', 'reliability']: assert (tmp_path/'eval'/f'{png}.png').stat().st_size > 5000
    assert m['accuracy'] > 3 / 43, "a trained model should beat chance on the synthetic signs"

def test_evaluate_corruptions_writes_table_and_figure(tiny_model, synthetic_data, tmp_path):
    r = run_gtsr('evaluate', '--data', synthetic_data, '--model', tiny_model, '--out', tmp_path/'eval', '--corruptions')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'mean accuracy at severity 3' in r.stdout
    c = json.loads((tmp_path/'eval'/'metrics.json').read_text())['corruptions']
    names = ['gaussian_noise', 'motion_blur', 'defocus_blur', 'jpeg_compression', 'contrast', 'brightness', 'pixelate', 'fog']
    assert list(c['accuracy']) == [*names, 'mean'] and all(list(a) == ['1', '3', '5'] for a in c['accuracy'].values())
    assert c['images'] == 43 and c['clean_accuracy'] > 3 / 43
    assert c['accuracy']['gaussian_noise']['5'] <= c['clean_accuracy'] and c['accuracy']['contrast']['5'] < c['clean_accuracy']
    table = (tmp_path/'eval'/'corruptions.md').read_text()
    assert table.startswith('| corruption | severity 1 | severity 3 | severity 5 |') and all(n.replace('_', ' ') in table for n in names)
    assert (tmp_path/'eval'/'corruption_examples.png').stat().st_size > 20000
    again = run_gtsr('evaluate', '--data', synthetic_data, '--model', tiny_model, '--out', tmp_path/'again', '--corruptions')
    assert (tmp_path/'again'/'corruptions.md').read_text() == table, "a seeded corruption run should be reproducible"

def test_evaluate_without_labels_is_an_error(tiny_model, synthetic_data, tmp_path):
    shutil.copytree(synthetic_data/'GTSRB'/'Final_Test', tmp_path/'unlabelled'/'GTSRB'/'Final_Test')
    r = run_gtsr('evaluate', '--data', tmp_path/'unlabelled', '--model', tiny_model, '--out', tmp_path/'eval')
    assert r.returncode == 1 and 'have no labels' in r.stderr and 'Traceback' not in r.stderr

def test_reloaded_model_predicts_like_the_trained_one(tiny_model, synthetic_data):
    from gtsr.inference import Classifier
    from gtsr.data import load_gtsrb
    paths = list(load_gtsrb(synthetic_data).query("split == 'test'").path[:10])
    a, b = Classifier.load(tiny_model), Classifier.load(tiny_model)
    assert [p[0] for p in a.predict_batch(paths)] == [p[0] for p in b.predict_batch(paths)]

def test_modified_model_is_refused(tiny_model, tmp_path):
    shutil.copytree(tiny_model.parent, tmp_path/'m')
    with open(tmp_path/'m'/'model.pkl', 'r+b') as f: f.seek(100); f.write(b'\x00\x01\x02')
    r = run_gtsr('predict', '--model', tmp_path/'m'/'model.pkl', tiny_model)
    assert r.returncode == 1 and 'does not match its checksum' in r.stderr and 'refusing to load' in r.stderr

def test_model_missing_from_manifest_is_refused(tiny_model, tmp_path):
    shutil.copy(tiny_model, tmp_path/'other.pkl'); shutil.copy(tiny_model.parent/'manifest.json', tmp_path)
    r = run_gtsr('predict', '--model', tmp_path/'other.pkl', tiny_model)
    assert r.returncode == 1 and 'not listed' in r.stderr

def test_missing_model_is_a_clear_error(tmp_path):
    r = run_gtsr('predict', '--model', tmp_path/'none.pkl', tmp_path)
    assert r.returncode == 1 and 'No model at' in r.stderr and 'gtsr train' in r.stderr

def test_resume_after_interruption(synthetic_data, tmp_path):
    "Interrupt a real run with Ctrl-C after its first checkpoint, then --resume finishes it."
    out, env = tmp_path/'run', {'GTSR_CACHE': str(tmp_path/'cache')}
    args = ['train', '--data', synthetic_data, '--out', out, '--epochs', '12', '--members', '1', *TINY]
    p = start_gtsr_interruptible(*args, env=env)
    deadline = time.time() + 300
    while not (out/'progress.json').exists() and time.time() < deadline and p.poll() is None: time.sleep(0.2)
    assert p.poll() is None, "training ended before it could be interrupted"
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=120)
    assert p.returncode == 130
    stopped = json.loads((out/'progress.json').read_text())['epoch']
    assert 1 <= stopped < 12 and not (out/'model.pkl').exists()
    r = run_gtsr(*args, '--resume', env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    progress = json.loads((out/'progress.json').read_text())
    assert progress['epoch'] == 12 and (out/'model.pkl').exists()
    r = run_gtsr(*args, env=env)
    assert r.returncode == 1 and '--resume' in r.stderr

def test_pretrained_without_weights_stops_with_a_message(synthetic_data, tmp_path):
    if os.environ.get('GTSR_ONLINE'): pytest.skip('this machine can download ImageNet weights')
    r = run_gtsr('train', '--data', synthetic_data, '--out', tmp_path/'run', '--arch', 'resnet18', '--pretrained', '--epochs', '1',
                 env={'TORCH_HOME': str(tmp_path/'torch'), 'GTSR_CACHE': str(tmp_path/'cache')})
    assert r.returncode == 1
    assert 'ImageNet weights for resnet18 could not be downloaded' in r.stderr and '--no-pretrained' in r.stderr
    assert not (tmp_path/'run'/'model.pkl').exists()

def test_committee_trains_exports_and_agrees_across_backends(synthetic_data, tmp_path):
    "`gtsr train --members 2`: two member runs, one committee learner, ONNX exports that agree with it."
    out = tmp_path/'committee'
    r = run_gtsr('train', '--data', synthetic_data, '--out', out, '--epochs', '2', '--all-train', '--members', '2', '--seed', '5', *TINY,
                 env={'GTSR_CACHE': str(tmp_path/'cache')})
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out/'member1'/'model.pkl').is_file() and (out/'member2'/'model.pkl').is_file()
    import numpy as np
    from gtsr.data import load_gtsrb
    from gtsr.inference import Classifier
    from gtsr.model import Committee
    clf = Classifier.load(out/'model.pkl')
    assert isinstance(clf.learner.model, Committee) and [m['seed'] for m in clf.learner.gtsr['members']] == [5, 6]
    r = run_gtsr('export', '--model', out/'model.pkl', '--data', synthetic_data)
    assert r.returncode == 0, r.stderr[-3000:]
    images = list(load_gtsrb(synthetic_data).query("split == 'test'").path)
    assert np.abs(Classifier.load(out/'model.pkl', 'onnx').probabilities(images) - clf.probabilities(images)).max() < 1e-4
    r = run_gtsr('train', '--data', synthetic_data, '--out', tmp_path/'none', '--members', '0', *TINY)
    assert r.returncode != 0 and 'members must be 1 or more' in r.stderr

def test_two_processes_train_one_model_through_accelerate(synthetic_data, tmp_path):
    "`accelerate launch` with two CPU processes (gloo): fastai's distrib_ctx shares each epoch, process 0 exports one model."
    out = tmp_path/'ddp'
    accelerate = Path(sys.executable).parent/'accelerate'
    r = subprocess.run([str(accelerate), 'launch', '--multi_gpu', '--num_processes', '2', '--num_machines', '1', '--mixed_precision', 'no',
                        '--dynamo_backend', 'no', '-m', 'gtsr.cli', 'train', '--data', str(synthetic_data), '--out', str(out),
                        '--epochs', '2', '--members', '1', '--device', 'cpu', *TINY],
                       capture_output=True, text=True, timeout=600, env={**os.environ, 'GTSR_CACHE': str(tmp_path/'cache')})
    assert r.returncode == 0, r.stderr[-3000:]
    import torch
    from gtsr.torch_run import precision_of
    assert f"Training signnet on cpu in {precision_of(torch.device('cpu'))}, 2 processes" in r.stdout # bf16 where the CPU computes in it
    assert r.stdout.count('model:') == 2, "both processes finish, after process 0 exported the model"
    from gtsr.modelfile import load_learner_verified
    learn = load_learner_verified(out/'model.pkl')
    assert learn.gtsr['config']['device'] == 'cpu'
    assert json.loads((out/'progress.json').read_text())['epoch'] == 2

def test_unavailable_device_is_a_clear_error(synthetic_data, tmp_path):
    r = run_gtsr('train', '--data', synthetic_data, '--out', tmp_path/'run', '--device', 'cuda', *TINY)
    assert r.returncode == 1 and 'no CUDA GPU' in r.stderr and '--device cpu' in r.stderr
    assert not (tmp_path/'run').exists()
