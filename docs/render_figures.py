"""Render the figures of README.md and gtsr/models/README.md from the JSON files in docs/figures/, so that each figure
has one source: the command that wrote its JSON (named in the JSON's `command`).

    python docs/render_figures.py           # rewrite every marked block
    python docs/render_figures.py --check   # exit 1 if a block differs from what its JSON says (tests/test_packaging.py)

A block is the text between `<!-- figure: NAME -->` and `<!-- /figure -->`; NAME names a function of FIGURES below.
"""
import json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES_DIR = ROOT/'docs'/'figures'
DOCS = [ROOT/'README.md', ROOT/'gtsr'/'models'/'README.md']
BLOCK = re.compile(r'(<!-- figure: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /figure -->)', re.S)

def load(name:str) -> dict:
    "The JSON of docs/figures/NAME.json."
    return json.loads((FIGURES_DIR/f'{name}.json').read_text())

def _table(name:str) -> 'pd.DataFrame':
    import pandas as pd
    return pd.DataFrame(load(name)['rows'])

def robustness_table(name:str) -> str:
    "`gtsr.detect_robustness.robustness_markdown` of a robustness.json (`gtsr evaluate-detector --corruptions --out DIR`)."
    from gtsr.detect_robustness import robustness_markdown
    command = load(name).get('command')
    return robustness_markdown(_table(name)) + (f"\n\n`{command}`" if command else '')

def summary(name:str) -> dict:
    "A robustness table's headline figures at level 3: clean recall and precision, the mean recall of the eight, the lowest of their precisions, night, rain."
    from gtsr.config import SCENE_CORRUPTIONS
    t = _table(name)
    clean, three = t[t.corruption == 'none'].iloc[0], t[(t.level == 3) & t.corruption.isin(SCENE_CORRUPTIONS)]
    own = {c: t[(t.level == 3) & (t.corruption == c)].recall for c in ('night', 'rain')}
    return dict(clean_recall=clean.recall, clean_precision=clean.precision, mean=three.recall.mean(), lowest_precision=three.precision.min(),
                **{c: (r.iloc[0] if len(r) else float('nan')) for c, r in own.items()}, complete=len(three) == len(SCENE_CORRUPTIONS))

def robustness_pair(before:str, after:str, # robustness JSON names (docs/figures/NAME.json)
                    names:tuple, # what to call the two detectors in the header
                   ) -> str:
    "Two detectors' recall, precision and AP per corruption at level 3, side by side, with the change from `before` to `after`."
    a, b = (_table(n).set_index(['corruption', 'level']) for n in (before, after))
    lines = [f"| corruption | recall: {names[0]} / {names[1]} | change | precision: {names[0]} / {names[1]} | AP: {names[0]} / {names[1]} |",
             '| --- | ---: | ---: | ---: | ---: |']
    for key in a.index.intersection(b.index):
        x, y = a.loc[key], b.loc[key]
        name = 'none (clean)' if key[0] == 'none' else key[0]
        lines.append(f"| {name} | {x.recall:.1%} / {y.recall:.1%} | {100 * (y.recall - x.recall):+.1f} | {x.precision:.1%} / {y.precision:.1%} | {x.ap:.3f} / {y.ap:.3f} |")
    sa, sb = summary(before), summary(after)
    lines.append(f"| **mean of the eight** | {sa['mean']:.1%} / {sb['mean']:.1%} | {100 * (sb['mean'] - sa['mean']):+.1f} | lowest {sa['lowest_precision']:.1%} / {sb['lowest_precision']:.1%} | |")
    return '\n'.join(lines)

def detector_attempts() -> str:
    "One line per detector scored under the corruptions (docs/figures/robustness-*.json, in `attempts.json`'s order)."
    lines = ['| detector | clean recall / precision | mean of the eight, level 3 | lowest precision of the eight | night / rain, level 3 |',
             '| --- | ---: | ---: | ---: | ---: |']
    for a in load('attempts')['attempts']:
        s = summary(a['figures'])
        lines.append(f"| {a['name']} | {s['clean_recall']:.1%} / {s['clean_precision']:.1%} | **{s['mean']:.1%}** | {s['lowest_precision']:.1%} | {s['night']:.1%} / {s['rain']:.1%} |")
    return '\n'.join(lines)

def operating_points() -> str:
    "The operating point `choose_operating_point` chose for each trained attempt (docs/figures/attemptN-manifest.json, the manifests `gtsr train-detector` wrote)."
    lines = ['| attempt | zooms | threshold | bounds met | clean recall / precision | mean of the eight, level 3 | lowest precision of the eight |',
             '| --- | --- | ---: | --- | ---: | ---: | ---: |']
    for path in sorted(FIGURES_DIR.glob('attempt*-manifest.json')):
        entry = json.loads(path.read_text())['manifest']['detector.onnx']
        op = entry['operating_point']
        lines.append(f"| {path.name.split('-')[0].replace('attempt', 'attempt ')} | {', '.join(map(str, entry['zooms']))} | {entry['min_score']} | {op['met']} | "
                     f"{op['clean_recall']:.1%} / {op['clean_precision']:.1%} | {op['mean_spoiled_recall']:.1%} | {op['lowest_spoiled_precision']:.1%} |")
    return '\n'.join(lines)

def classifier_attempts() -> str:
    "One line per classifier scored on the test half (docs/figures/classifier-*.json, the metrics.json of `gtsr evaluate`, in `classifier-attempts.json`'s order)."
    lines = ['| classifier | test half: accuracy (errors) | ECE | "not a sign" AUROC | corruptions, mean at level 3 | command |',
             '| --- | ---: | ---: | ---: | ---: | --- |']
    for a in load('classifier-attempts')['attempts']:
        m = load(a['figures'])
        auroc = m.get('sign_vs_not', {}).get('auroc')
        mean3 = m.get('corruptions', {}).get('mean_at_middle_severity')
        lines.append(f"| {a['name']} | {m['accuracy']:.2%} ({m['errors']}) | {m['ece']:.4f} | {'-' if auroc is None else f'{auroc:.4f}'} | "
                     f"{'-' if mean3 is None else f'{mean3:.1%}'} | `{m.get('command', '')}` |")
    return '\n'.join(lines)

def classifier_pairs() -> str:
    "The most frequent errors (true sign -> answer) of the classifiers whose metrics.json lists them (`most_confused`), each classifier's count beside each pair."
    scored = [(a['name'], load(a['figures'])) for a in load('classifier-attempts')['attempts']]
    scored = [(name, {(p['true'], p['predicted']): p for p in m['most_confused']}) for name, m in scored if 'most_confused' in m]
    pairs = {k: p for _, c in scored for k, p in c.items()} # each pair's names, as `gtsr evaluate` wrote them
    lines = ['| true sign | answered | ' + ' | '.join(name for name, _ in scored) + ' |', '| --- | --- |' + ' ---: |' * len(scored)]
    count = lambda c, k: c[k]['count'] if k in c else 0
    for (t, p), pair in sorted(pairs.items(), key=lambda kv: (-max(count(c, kv[0]) for _, c in scored), kv[0])):
        lines.append(f"| {t} {pair['true_name']} | {p} {pair['predicted_name']} | " + ' | '.join(str(count(c, (t, p)) or '-') for _, c in scored) + ' |')
    return '\n'.join(lines + ['', '"-": not among that classifier\'s 15 most frequent errors.'])

def headline() -> str:
    "The shipped models' headline figures, for the README: the classifier's metrics.json (`classifier-shipped`) and the detector's robustness.json (`robustness-shipped`)."
    m, s, t = load('classifier-shipped'), summary('robustness-shipped'), _table('robustness-shipped')
    clean = t[t.corruption == 'none'].iloc[0]
    detector = load('robustness-shipped')
    return '\n'.join([
        '| shipped model | scored on | clean | under 8 common corruptions, level 3 (mean) |',
        '| --- | --- | --- | ---: |',
        f"| classifier (`model-int8.onnx`) | the public half of GTSRB's test set, {m['images']:,} sign crops | **{m['accuracy']:.2%}** top-1 ({m['errors']} errors); "
        f"calibration error (ECE) {m['ece']:.4f}; sign vs not a sign AUROC {m['sign_vs_not']['auroc']:.4f} | {m['corruptions']['mean_at_middle_severity']:.1%} (of {m['corruptions']['images']:,} sampled crops) |",
        f"| detector (`detector.onnx` + the classifier) | {detector['scenes']} GTSDB validation road scenes, {int(clean.signs)} signs | recall **{s['clean_recall']:.1%}**, "
        f"precision **{s['clean_precision']:.1%}** (right name, IoU 0.5); AP {clean.ap:.3f} | {s['mean']:.1%} (recall) |",
        '', f"`{m['command']}`", '', f"`{detector['command']}`"])

def detector_shipped() -> str:
    "The shipped detector's clean figures on the validation scenes (docs/figures/detector-shipped.json, the metrics.json of `gtsr evaluate-detector`)."
    m = load('detector-shipped')
    sizes = ' / '.join(f"{m[f'recall {s}']:.1%} of {m[f'signs {s}']}" for s in ('small (<32 px)', 'medium (32-64 px)', 'large (>=64 px)'))
    return '\n'.join([f"| at IoU >= 0.5, reported from score {m['min_score']} | right name | any name |", '| --- | ---: | ---: |',
                      f"| recall (signs found) | **{m['recall']:.1%}** | {m['recall_any_name']:.1%} |",
                      f"| precision (reported signs that are real) | **{m['precision']:.1%}** | {m['precision_any_name']:.1%} |",
                      f"| average precision (torchmetrics, pycocotools backend; all scores) | **{m['ap']:.3f}** | {m['ap_any_name']:.3f} |",
                      f"| recall, signs under 32 px / 32-64 px / 64 px and more | {sizes} | |",
                      f"| false alarms per scene (wrong name counted too) | {m['false_alarms_per_scene']:.3f} ({round(m['false_alarms_per_scene'] * m['scenes'])} in {m['scenes']} scenes) | |",
                      '', f"`{m['command']}`"])

def video_drives() -> str:
    "The tracker on the simulated drives (docs/figures/video-*.json, the output of `gtsr evaluate-video --json`, in `video-drives.json`'s order, with the command of each)."
    lines = ['| drive | detector, tracker | signs listed with the right name | listed signs real | signs split | stacked pairs, both named | MOTA / IDF1 | command |',
             '| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |']
    for a in load('video-drives')['drives']:
        m = load(a['figures'])
        stacked = f"{m['stacked_named']} of {m['stacked_pairs']}" if 'stacked_pairs' in m else '-' # scored since issue 30
        lines.append(f"| {a['drive']} | {a['setup']} | **{m['recall']:.1%}** ({m['named']} of {m['signs']}) | {m['precision']:.1%} ({m['real']} of {m['tracks']}) | "
                     f"{m['split']:.1%} ({m['split_signs']}) | {stacked} | {m['mota']:.3f} / {m['idf1']:.3f} | `{a['command']}` |")
    return '\n'.join(lines)

FIGURES = {
    'video-drives': video_drives,
    'headline': headline,
    'classifier-attempts': classifier_attempts,
    'classifier-pairs': classifier_pairs,
    'robustness-shipped': lambda: robustness_table('robustness-shipped'),
    'robustness-previous': lambda: robustness_table('robustness-previous'),
    'robustness-attempt10': lambda: robustness_table('robustness-attempt10'),
    'detector-attempts': detector_attempts,
    'pasting-effect': lambda: robustness_pair('robustness-shipped', 'robustness-attempt14', ('13', '14')),
    'detector-shipped': detector_shipped,
    'operating-points': operating_points,
}

def render(text:str) -> str:
    "`text` with every marked block made anew from its JSON."
    def block(m):
        if m['name'] not in FIGURES: raise SystemExit(f"unknown figure {m['name']!r}; known: {', '.join(FIGURES)}")
        return m.group(1) + FIGURES[m['name']]().rstrip('\n') + '\n' + m.group(4)
    return BLOCK.sub(block, text)

def main(check:bool=False) -> int:
    stale = []
    for doc in DOCS:
        text = doc.read_text()
        new = render(text)
        if new != text:
            stale.append(doc.relative_to(ROOT))
            if not check: doc.write_text(new)
    if check and stale: print(f"figures differ from docs/figures/*.json in {', '.join(map(str, stale))}: run python docs/render_figures.py")
    return 1 if check and stale else 0

if __name__ == '__main__': sys.exit(main('--check' in sys.argv[1:]))
