"""The Voila app in real headless Chromium: upload a known sign and a non-image, road photos and clips at desktop and
phone sizes, read the page, measure the visitor's kernel, take screenshots."""
import io, os, re, shutil, signal, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest
from PIL import Image
from conftest import ROOT
from gtsr.loadgen import free_port
from gtsr.app import voila_command
from gtsr.modelfile import default_model_path

CHROMIUM = shutil.which('chromium') or '/usr/bin/chromium'
ARTIFACTS = ROOT/'tests'/'_artifacts'


@pytest.fixture(scope='module')
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get('GTSR_REQUIRE_BROWSER'): pytest.fail(f"chromium not found at {CHROMIUM} (apt-get install chromium)")
        pytest.skip("needs Debian's chromium (apt-get install chromium) for the browser test")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic',
                              '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'])
        yield b
        b.close()

@pytest.fixture(scope='module')
def app_server(tmp_path_factory, request):
    "The app served by Voila on 127.0.0.1 with the shipped model (and the real data for references, when present); yields (url, process, log path)."
    port = free_port()
    env = {**os.environ, 'GTSR_MODEL': str(default_model_path())}
    real = request.getfixturevalue('optional_real_data')
    if real: env['GTSR_DATA'] = str(real)
    log = open(tmp_path_factory.mktemp('voila')/'voila.log', 'w')
    proc = subprocess.Popen(voila_command(port), env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f'http://127.0.0.1:{port}/'
    deadline = time.time() + 120
    while time.time() < deadline:
        try: urllib.request.urlopen(url, timeout=5); break
        except Exception: time.sleep(0.5)
        assert proc.poll() is None, f"voila exited early: {Path(log.name).read_text()}"
    yield url, proc, Path(log.name)
    proc.terminate(); proc.wait(20)

@pytest.fixture(scope='module')
def app_url(app_server): return app_server[0]

@pytest.fixture(scope='module')
def optional_real_data(request):
    "The extracted real GTSRB if the mirror is there, else None (the test then checks only that a prediction appears)."
    from conftest import MIRROR
    if not (MIRROR/'GTSRB_Final_Test_Images.zip').is_file(): return None
    return request.getfixturevalue('real_data')

def known_sign(real, tmp_path) -> tuple[Path, str|None]:
    "A test image of a known class (real data when present) saved as PNG, and its class name."
    from gtsr.data import load_gtsrb
    if real:
        test = load_gtsrb(real).query("split == 'test' and class_id == 14")
        src, name = test.path.iloc[0], 'Stop'
    else:
        from gtsr.synthetic import draw_sign
        src, name = draw_sign(14, 64), None
    img = Image.open(src) if isinstance(src, str) else src
    out = tmp_path/'sign.png'; img.convert('RGB').save(out)
    return out, name

def open_app(browser, app_url):
    "A new 1200x900 page with the app loaded (its upload button shown)."
    page = browser.new_page(viewport={'width': 1200, 'height': 900})
    page.goto(app_url, timeout=120_000)
    page.wait_for_selector('button.widget-upload', timeout=120_000)
    return page

def upload(page, files):
    with page.expect_file_chooser() as fc: page.click('button.widget-upload')
    fc.value.set_files([str(f) for f in files])

def test_app_classifies_an_upload_in_chromium(browser, app_url, optional_real_data, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    sign, name = known_sign(optional_real_data, tmp_path)
    junk = tmp_path/'notes.txt'; junk.write_text('this is not a picture')
    page = open_app(browser, app_url)
    start = time.time()
    upload(page, [sign, junk])
    page.wait_for_selector('.gtsr-prediction', timeout=60_000)
    elapsed = time.time() - start
    prediction = page.inner_text('.gtsr-prediction')
    if name: assert name in prediction, prediction
    assert page.locator('.gtsr-top5').count() == (0 if 'Not a traffic sign' in prediction else 1)
    error = page.inner_text('.gtsr-error')
    assert 'notes.txt' in error and 'could not classify' in error and 'jpg, png' in error and 'Pillow' not in error # in plain words
    page.screenshot(path=str(ARTIFACTS/'app.png'), full_page=True)
    print(f"prediction shown {elapsed:.2f} s after the upload: {prediction!r}")
    page.set_viewport_size({'width': 390, 'height': 844})
    page.screenshot(path=str(ARTIFACTS/'app-phone.png'), full_page=True)
    page.close()

def test_gradcam_switched_on_loads_the_learner_and_shows_the_overlay(browser, app_url, optional_real_data, tmp_path):
    "The page predicts on ONNX; switching Grad-CAM on loads the fastai learner in the kernel and adds the overlay."
    sign, _ = known_sign(optional_real_data, tmp_path)
    page = open_app(browser, app_url)
    upload(page, [sign])
    page.wait_for_selector('.gtsr-prediction', timeout=60_000)
    prediction = page.inner_text('.gtsr-prediction')
    assert page.locator('small:has-text("where the model looked")').count() == 0
    page.click('text=Show where the model looked')
    page.wait_for_selector('small:has-text("where the model looked")', timeout=120_000)
    assert page.inner_text('.gtsr-prediction') == prediction and page.locator('.gtsr-error').count() == 0
    page.close()

def test_app_survives_a_huge_and_a_corrupt_upload(browser, app_url, tmp_path):
    "A 12 MB, 4000x3000 photo and a truncated PNG: a prediction for the first, a message for the second, kernel alive."
    import numpy as np
    big = tmp_path/'big.bmp'
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (3000, 4000, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > 10 * 1024 * 1024
    good = io.BytesIO(); Image.new('RGB', (64, 64), 'red').save(good, 'PNG')
    broken = tmp_path/'broken.png'; broken.write_bytes(good.getvalue()[:60])
    page = open_app(browser, app_url)
    upload(page, [big, broken])
    page.wait_for_selector('.gtsr-prediction', timeout=120_000)
    assert 'broken.png' in page.inner_text('.gtsr-error')
    page.close()

@pytest.fixture(scope='module')
def real_gtsdb(tmp_path_factory):
    "The real GTSDB training scenes, extracted once from the mirror (skips when the mirror is absent)."
    from gtsr.download import download_gtsdb
    mirror = Path(os.environ.get('GTSR_GTSDB_MIRROR', ROOT.parent/'shared'/'gtsdb'))
    if not (mirror/'TrainIJCNN2013.zip').is_file(): pytest.skip(f"needs the real GTSDB scenes: no mirror at {mirror} (set GTSR_GTSDB_MIRROR)")
    return download_gtsdb(tmp_path_factory.mktemp('gtsdb')/'gtsdb', mirror=mirror, quiet=True)

def real_background(folder, tmp_path) -> Path:
    "A 96 px square of a GTSDB validation scene with no sign in it, saved as PNG."
    from gtsr.gtsdb import background_boxes, gtsdb_scenes, gtsdb_split, load_gtsdb
    signs, (_, valid) = load_gtsdb(folder), gtsdb_split(gtsdb_scenes(folder))
    box = background_boxes(valid.iloc[:1], signs, per_scene=1, sizes=(96, 97), seed=3).iloc[0]
    out = tmp_path/'road.png'
    Image.open(box.path).crop((box.x1, box.y1, box.x2, box.y2)).save(out)
    return out

def test_app_tells_a_real_sign_from_a_real_road_scene(browser, app_url, optional_real_data, real_gtsdb, tmp_path):
    "A real GTSRB stop sign is named in green; a sign-free square of a real GTSDB road scene is 'No traffic sign found', without guesses."
    if not optional_real_data: pytest.skip(f"needs the real GTSRB test images (mirror at {ROOT.parent/'shared'/'gtsrb'})")
    sign, name = known_sign(optional_real_data, tmp_path)
    road = real_background(real_gtsdb, tmp_path)
    page = open_app(browser, app_url)
    upload(page, [sign, road])
    page.wait_for_function("document.querySelectorAll('.gtsr-prediction').length == 2", timeout=60_000)
    assert name in page.inner_text('.gtsr-sign')
    assert 'No traffic sign found' in page.inner_text('.gtsr-not-a-sign')
    assert page.locator('.gtsr-top5').count() == 1, "guesses are shown for the sign only"
    page.close()

def test_app_boxes_and_names_the_signs_of_a_real_road_photo(browser, app_url, real_gtsdb, tmp_path):
    """A real validation scene (the first with one sign at least 40 px wide): its sign is boxed and named; the first
    sign-free validation scene says 'No traffic sign found'; a 12-megapixel version of the scene is answered too."""
    from gtsr.gtsdb import gtsdb_scenes, gtsdb_split, load_gtsdb
    ARTIFACTS.mkdir(exist_ok=True)
    signs, (_, valid) = load_gtsdb(real_gtsdb), gtsdb_split(gtsdb_scenes(real_gtsdb))
    one = signs[signs.path.isin(valid.query('signs == 1').path) & (signs.x2 - signs.x1 >= 40)].sort_values('path').iloc[0]
    empty = valid.query('signs == 0').path.sort_values().iloc[0]
    scene, free, big = tmp_path/'scene.jpg', tmp_path/'empty.jpg', tmp_path/'phone.jpg'
    shutil.copy(one.path, scene); shutil.copy(empty, free)
    photo = Image.open(one.path)
    photo.resize((4600, round(4600 * photo.height / photo.width)), Image.Resampling.BICUBIC).save(big, quality=92)
    page = open_app(browser, app_url)
    upload(page, [scene, free])
    page.wait_for_function("document.querySelectorAll('.gtsr-scene').length == 1 && document.querySelectorAll('.gtsr-not-a-sign').length == 1", timeout=60_000)
    assert '1 traffic sign' in page.inner_text('.gtsr-scene')
    assert one['name'] in page.inner_text('.gtsr-sign'), (one['name'], page.inner_text('.gtsr-sign'))
    assert 'No traffic sign found' in page.inner_text('.gtsr-not-a-sign')
    page.set_viewport_size({'width': 1000, 'height': 1000})
    page.screenshot(path=str(ARTIFACTS/'app-scene.png'), full_page=True)
    page.reload(); page.wait_for_selector('button.widget-upload', timeout=120_000)
    start = time.time()
    upload(page, [big])
    page.wait_for_selector('.gtsr-scene', timeout=60_000)
    print(f"12-megapixel photo ({big.stat().st_size / 1e6:.1f} MB) answered {time.time() - start:.2f} s after the upload")
    assert one['name'] in page.inner_text('.gtsr-sign')
    page.close()

def start_app(port:int, log:Path, **env) -> subprocess.Popen:
    "`gtsr app` on 127.0.0.1:`port` with the shipped model, SIGINT and SIGHUP at their defaults (a background shell ignores them), once it answers."
    proc = subprocess.Popen([sys.executable, '-m', 'gtsr.cli', 'app', '--port', str(port)], stdout=open(log, 'w'), stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, 'GTSR_MODEL': str(default_model_path()), **env},
                            preexec_fn=lambda: [signal.signal(s, signal.SIG_DFL) for s in (signal.SIGINT, signal.SIGHUP)])
    deadline = time.time() + 120
    while time.time() < deadline:
        try: urllib.request.urlopen(f'http://127.0.0.1:{port}/voila/static/voila.js', timeout=5); return proc
        except Exception: time.sleep(0.2)
        assert proc.poll() is None, f"gtsr app exited early: {log.read_text()}"
    proc.kill(); pytest.fail(f"gtsr app did not answer within 120 s: {log.read_text()}")

def kernels(proc:subprocess.Popen) -> list:
    "The kernel processes below `gtsr app`."
    import psutil
    def is_kernel(p):
        try: return 'ipykernel' in ' '.join(p.cmdline())
        except psutil.NoSuchProcess: return False # gone, or a zombie not yet reaped
    return [p for p in psutil.Process(proc.pid).children(recursive=True) if is_kernel(p)]

def test_closed_and_abandoned_pages_free_their_kernels(browser, tmp_path):
    """Ten pages, five at a time: five left as a tab is closed or navigated away from (the page's shutdown request on
    `beforeunload`, which Playwright's `page.close` skips), five dropped without a word (as a crashed browser or a lost
    connection leaves them, for the culler): at most one kernel is left after the culling time."""
    port, log = free_port(), tmp_path/'app.log'
    proc = start_app(port, log, GTSR_APP_CULL_IDLE='15') # long enough for five kernels starting at once on 2 cores to be reached by their pages
    try:
        start, peak = time.time(), 0
        for say_goodbye in (True, False):
            pages = [browser.new_page() for _ in range(5)]
            for page in pages: page.goto(f'http://127.0.0.1:{port}/', wait_until='commit', timeout=60_000)
            for page in pages: page.wait_for_selector('button.widget-upload', timeout=60_000)
            peak = max(peak, len(kernels(proc)))
            closed = time.time()
            for page in pages:
                if say_goodbye: page.goto('about:blank')
                page.close()
            while kernels(proc) and time.time() - closed < 30: time.sleep(0.2) # the culler: 15 s idle, checked every 3 s
            print(f"{'closed' if say_goodbye else 'abandoned'}: {len(kernels(proc))} kernel(s) left {time.time() - closed:.1f} s later")
        text = log.read_text()
        culled, shut = text.count("Culling 'idle' kernel"), text.count('Kernel shutdown: ')
        print(f"peak {peak} kernels; {shut - culled} shut down by their pages, {culled} culled; {time.time() - start:.1f} s in all")
        assert peak >= 5 and len(kernels(proc)) <= 1
        assert '403 POST /voila/api/shutdown' not in text and shut - culled >= 5, text[-3000:]
    finally:
        proc.terminate(); proc.wait(20)

def road_photo(tmp_path) -> Path:
    """A road photo with several signs: the validation scene with the most signs of a GTSDB extracted at `$GTSR_GTSDB`
    (default ../data/gtsdb), else the drawn scene in which the shipped detector finds the most signs (skips if none)."""
    folder = Path(os.environ.get('GTSR_GTSDB', ROOT.parent/'data'/'gtsdb'))
    if (folder/'TrainIJCNN2013').is_dir():
        from gtsr.gtsdb import gtsdb_scenes, gtsdb_split
        valid = gtsdb_split(gtsdb_scenes(folder))[1]
        return Path(valid.assign(neg=-valid.signs).sort_values(['neg', 'path']).path.iloc[0])
    from gtsr.gtsdb import gtsdb_scenes
    from gtsr.detect import Detector
    from gtsr.synthetic import make_synthetic_gtsdb
    detector = Detector.load()
    scenes = gtsdb_scenes(make_synthetic_gtsdb(tmp_path/'gtsdb', scenes=6, sign_free=0, size=(1360, 800), seed=4)).path
    best = max(scenes, key=lambda p: len(detector.detect(p)))
    if not detector.detect(best): pytest.skip('the shipped detector finds no sign in the drawn scenes, and no GTSDB is extracted')
    return Path(best)

PHOTO_FITS = """() => { const img = document.querySelector('img.gtsr-photo');
    return {shown: img.getBoundingClientRect().width, natural: img.naturalWidth, page: document.documentElement.clientWidth,
            scroll: document.documentElement.scrollWidth}; }"""

def check_scene_page(page) -> dict:
    "The road-photo page's checks: one numbered card per sign, the photo no wider than its pixels or the page, no 0% filler; returns the photo's widths."
    n = int(page.inner_text('.gtsr-scene').split(' traffic sign')[0])
    cards = page.locator('.gtsr-sign-card')
    assert n >= 1 and cards.count() == n, (n, cards.count())
    assert [cards.nth(k).locator('.gtsr-tag').inner_text().strip() for k in range(n)] == [str(k) for k in range(1, n + 1)]
    sizes = page.evaluate(PHOTO_FITS)
    assert 0 < sizes['shown'] <= sizes['natural'] + 0.5, sizes # never stretched beyond its pixels
    assert sizes['shown'] <= sizes['page'] and sizes['scroll'] <= sizes['page'], sizes # and no wider than the screen
    import re
    text = page.inner_text('body')
    assert not re.search(r'(?<![\d.])0(\.0)?%', text) and 'closest' not in text, text # no "0%" or "0.0%" filler guesses
    assert not re.search(r'\b(99\.\d|100(\.0)?)%', text), text # confident answers read "over 99%", the same everywhere
    return sizes

FIRST_NAME = """() => { const name = document.querySelector('.gtsr-sign-card b'), photo = document.querySelector('img.gtsr-photo').getBoundingClientRect(),
    list = document.querySelector('.gtsr-sign-list').getBoundingClientRect(), r = name.getBoundingClientRect();
    return {top: r.top, bottom: r.bottom, screen: window.innerHeight, font: parseFloat(getComputedStyle(name).fontSize),
            photo_right: photo.right, photo_bottom: photo.bottom, list_left: list.left, list_top: list.top}; }"""

def test_app_shows_a_road_photo_readably_at_desktop_and_phone_sizes(browser, app_url, tmp_path):
    """A road photo at 1280x800 and on a 390x844 phone (3 device pixels per CSS pixel): the answer first (at 1280x800 the
    list stands beside the photo and the first sign's name is on the first screen, unscrolled; on the phone the list
    follows the photo); one card per sign, numbered left to right as on the photo; the photo at most at its own width;
    no 0% fillers. Screenshots go to tests/_artifacts (and to docs/ with GTSR_DOCS_SCREENSHOTS=1)."""
    from gtsr.detect import Detector
    ARTIFACTS.mkdir(exist_ok=True)
    photo = road_photo(tmp_path)
    left_to_right = [d.name for d in sorted(Detector.load().detect(photo), key=lambda d: d.box[0] + d.box[2])]
    shots = [ARTIFACTS/'app-scene.png', ARTIFACTS/'app-phone.png']
    for (width, height, scale), shot in zip([(1280, 800, 1), (390, 844, 3)], shots):
        context = browser.new_context(viewport={'width': width, 'height': height}, device_scale_factor=scale, is_mobile=scale > 1, has_touch=scale > 1)
        page = context.new_page()
        page.goto(app_url, timeout=120_000)
        page.wait_for_selector('button.widget-upload', timeout=120_000)
        upload(page, [photo])
        page.wait_for_selector('.gtsr-scene', timeout=90_000)
        page.wait_for_function("document.querySelector('img.gtsr-photo') && document.querySelector('img.gtsr-photo').complete", timeout=30_000)
        sizes = check_scene_page(page)
        names = [n.strip() for n in page.locator('.gtsr-sign-card b').all_inner_texts()]
        assert names == left_to_right, (names, left_to_right) # numbered left to right, as the tags on the photo
        first = page.evaluate(FIRST_NAME)
        assert first['font'] >= 11, first
        if width == 1280: # the answer first: the first name on the first screen, the list beside the photo, the photo not shrunk to a stamp
            assert 0 <= first['top'] and first['bottom'] <= first['screen'], first
            assert first['list_left'] >= first['photo_right'] - 1 and sizes['shown'] >= 0.5 * sizes['page'], (first, sizes)
        else: assert first['list_top'] >= first['photo_bottom'] - 1, first # on a phone the list follows the photo
        print(f"{width}x{height}: first sign's name at {first['top']:.0f}-{first['bottom']:.0f} CSS px of a {first['screen']} px screen")
        if scale == 1: page.set_viewport_size({'width': width, 'height': max(height, min(1600, page.evaluate('Math.max(...Array.from(document.querySelectorAll("*"), e => e.scrollHeight))')))}) # the cards too
        page.screenshot(path=str(shot), full_page=True)
        print(f"{width}x{height}: photo {sizes['natural']} px shown {sizes['shown']:.0f} CSS px wide")
        context.close()
    if os.environ.get('GTSR_DOCS_SCREENSHOTS'):
        for shot in shots: shutil.copy(shot, ROOT/'docs'/shot.name)

def test_a_new_upload_clears_the_old_result(browser, app_url, tmp_path):
    "The old result goes as soon as the next upload is being worked on: never 'Working...' above an old card."
    good = tmp_path/'red.png'; Image.new('RGB', (64, 64), 'red').save(good)
    page = open_app(browser, app_url)
    upload(page, [good])
    page.wait_for_selector('.gtsr-prediction', timeout=60_000)
    page.evaluate("""() => { window.mixed = false; new MutationObserver(() => {
        if (document.body.innerText.includes('Working...') && document.querySelector('.gtsr-prediction')) window.mixed = true;
      }).observe(document.body, {childList: true, subtree: true, characterData: true}); }""")
    page.click('text=Show where the model looked') # recomputes the same upload with Grad-CAM: the slowest case
    page.wait_for_selector('small:has-text("where the model looked")', timeout=120_000)
    assert not page.evaluate('window.mixed')
    page.close()

TIMELINE_TEXT = """() => { const box = document.querySelector('.gtsr-timeline').getBoundingClientRect();
    const texts = [...document.querySelectorAll('.gtsr-timeline *')].filter(e => [...e.childNodes].some(n => n.nodeType == 3 && n.textContent.trim()));
    return {smallest: Math.min(...texts.map(e => parseFloat(getComputedStyle(e).fontSize))), count: texts.length, right: box.right,
            page: document.documentElement.clientWidth,
            thumbs: [...document.querySelectorAll('.gtsr-sign-card img')].map(i => [i.getBoundingClientRect().width, i.getBoundingClientRect().height])}; }"""

def test_app_reads_a_clip_into_a_timeline_and_its_signs(browser, app_url, real_gtsdb, tmp_path):
    """A two-second clip driving towards a real scene with one 50 km/h sign: the page shows the timeline and the sign,
    named, with the crop of its best view and when it was best seen, in seconds; at 390 px the timeline's text is at
    least 11 CSS px and it fits the screen; its axis ends at the clip's end. The screenshots go to tests/_artifacts
    (and docs/ with GTSR_DOCS_SCREENSHOTS=1)."""
    import numpy as np
    from gtsr.video import write_frames
    ARTIFACTS.mkdir(exist_ok=True)
    a = np.asarray(Image.open(real_gtsdb/'TrainIJCNN2013'/'00006.jpg').convert('RGB'))
    h, w = a.shape[:2]
    clip = write_frames(tmp_path/'drive.mp4', [np.asarray(Image.fromarray(a[k * h // 250:h - k * h // 250, k * w // 250:w - k * w // 250]).resize((1280, 720)))
                                               for k in range(50)], fps=25)
    for (width, height, scale), shot in zip([(1280, 800, 1), (390, 844, 3)], ['app-clip.png', 'app-clip-phone.png']):
        context = browser.new_context(viewport={'width': width, 'height': height}, device_scale_factor=scale, is_mobile=scale > 1, has_touch=scale > 1)
        page = context.new_page()
        page.goto(app_url, timeout=120_000)
        page.wait_for_selector('button.widget-upload', timeout=120_000)
        upload(page, [clip])
        page.wait_for_selector('.gtsr-clip', timeout=300_000)
        assert '1 traffic sign passed' in page.inner_text('.gtsr-clip') and 'drive.mp4 (2.0 s, 1280x720)' in page.inner_text('.gtsr-clip')
        card = page.inner_text('.gtsr-sign-card')
        assert 'Speed limit (50km/h)' in card and re.search(r'best seen at \d+\.\d\s+s', card) and 'frame' not in card, card
        timeline = page.inner_text('.gtsr-timeline')
        assert 'Speed limit (50km/h)' in timeline and '50 km/h' in timeline and timeline.rstrip().endswith('2.0 s'), timeline # the axis ends at the clip's end
        text = page.evaluate(TIMELINE_TEXT)
        assert text['count'] >= 4 and text['smallest'] >= 11 and text['right'] <= text['page'], text
        assert text['thumbs'] == [[96, 96]], text # the sign's best view, in a square of the one size every crop gets
        print(f"{width}x{height}: timeline text at least {text['smallest']:g} CSS px")
        page.set_viewport_size({'width': width, 'height': max(height, min(1600, page.evaluate('Math.max(...Array.from(document.querySelectorAll("*"), e => e.scrollHeight))')))})
        page.screenshot(path=str(ARTIFACTS/shot), full_page=True)
        if os.environ.get('GTSR_DOCS_SCREENSHOTS'): shutil.copy(ARTIFACTS/shot, ROOT/'docs'/shot)
        context.close()

def kernel_mb(proc:subprocess.Popen) -> dict:
    "Resident MB of each kernel below `proc`, by pid."
    return {p.pid: p.memory_info().rss / 2**20 for p in kernels(proc)}

def ten_second_clip(folder, tmp_path) -> Path:
    "A 10 s, 960x540 clip driving towards five real GTSDB scenes in turn (2 s each)."
    import numpy as np
    from gtsr.video import write_frames
    frames = []
    for name in ('00006', '00316', '00014', '00020', '00338'):
        a = np.asarray(Image.open(folder/'TrainIJCNN2013'/f'{name}.jpg').convert('RGB'))
        h, w = a.shape[:2]
        frames += [np.asarray(Image.fromarray(a[k * h // 250:h - k * h // 250, k * w // 250:w - k * w // 250]).resize((960, 540))) for k in range(50)]
    return write_frames(tmp_path/'drive10.mp4', frames, fps=25)

def test_a_visitors_kernel_stays_lean_after_a_photo_and_a_clip(browser, app_server, real_gtsdb, tmp_path):
    """A visitor's kernel once the answer is shown: at most 200 MB after a 1360x800 road photo with four signs, and
    after a 10 s clip (measured 2 s after each answer appears, by the kernel's resident memory)."""
    url, proc, _ = app_server
    photo, clip = real_gtsdb/'TrainIJCNN2013'/'00316.jpg', ten_second_clip(real_gtsdb, tmp_path)
    for name, files, selector in [('photo', [photo], '.gtsr-scene'), ('10 s clip', [clip], '.gtsr-clip')]:
        before = set(kernel_mb(proc))
        page = open_app(browser, url)
        mine = [pid for pid in kernel_mb(proc) if pid not in before]
        assert len(mine) == 1, mine
        start = kernel_mb(proc)[mine[0]]
        upload(page, files)
        page.wait_for_selector(selector, timeout=180_000)
        time.sleep(2)
        after = kernel_mb(proc)[mine[0]]
        print(f"{name}: the visitor's kernel {start:.0f} MB before, {after:.0f} MB once the answer is shown")
        assert after <= 200, (name, start, after)
        page.goto('about:blank'); page.close()

def test_the_page_needs_nothing_from_outside_and_says_when_its_server_has_gone(browser, tmp_path):
    """`gtsr app` at 1280x800 and 390x844: every request the page makes goes to the app's own server (icons included),
    none fails, the upload button's tooltip says what it does; stopped with SIGTERM, the open pages say that the server
    has gone, within 10 s; the log has no deprecation warning and no KeyboardInterrupt."""
    ARTIFACTS.mkdir(exist_ok=True)
    port, log = free_port(), tmp_path/'app.log'
    proc = start_app(port, log)
    pages, outside, failed = [], [], []
    try:
        for width, height, scale in [(1280, 800, 1), (390, 844, 3)]:
            context = browser.new_context(viewport={'width': width, 'height': height}, device_scale_factor=scale, is_mobile=scale > 1, has_touch=scale > 1)
            page = context.new_page()
            page.on('request', lambda r: outside.append(r.url) if not r.url.startswith((f'http://127.0.0.1:{port}/', f'ws://127.0.0.1:{port}/', 'data:', 'blob:')) else None)
            page.on('requestfailed', lambda r: failed.append((r.url, r.failure)))
            page.goto(f'http://127.0.0.1:{port}/', timeout=120_000)
            page.wait_for_selector('button.widget-upload', timeout=120_000)
            title = page.get_attribute('button.widget-upload', 'title')
            assert title and title != 'null' and 'photo' in title, title
            icon = page.evaluate("getComputedStyle(document.querySelector('button.widget-upload i'), '::before').fontFamily")
            assert 'Font Awesome' in icon, icon # the icon's font is there, from Voila's own bundle
            pages.append((page, width))
        time.sleep(7) # two probes of the server's health
        assert not outside and not failed, (outside, failed)
        assert all(page.locator('.gtsr-server-gone').count() == 0 for page, _ in pages) # no false alarm while it runs
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        for page, width in pages:
            page.wait_for_selector('.gtsr-server-gone', timeout=10_000)
            assert 'server has stopped' in page.inner_text('.gtsr-server-gone')
            page.screenshot(path=str(ARTIFACTS/f'app-server-gone-{width}.png'))
            page.context.close()
        text = log.read_text()
        assert 'DeprecationWarning' not in text and 'KeyboardInterrupt' not in text, text[-3000:]
    finally:
        if proc.poll() is None: proc.terminate(); proc.wait(20)
