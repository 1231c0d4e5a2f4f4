"""Spoken clips: a training-data recipe for real-clip questions, kept out of the core (only the web page's
default examples come from it).

Clips whose sound is speech (espeak-ng voices in six languages, and Debian's recorded Asterisk prompts where
installed), a melody, noise, silence or no audio track, over AVSynth scenes without beeps or drifting
gradients; sentence answers about what is said, the language, the sound and the picture, and "I can't tell
from this clip." where nothing in the clip answers. See docs/spoken.md.

    python -m vqa.spoken.generate --out data/spoken --clips 700 --seed 0
"""
