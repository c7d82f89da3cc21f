"""Every peftkit internal the server uses, imported in this one place.

If one of these moves, this block is the only thing to fix.
"""

from peftkit.errors import PeftkitError  # noqa: F401
from peftkit.generative import score_labels  # noqa: F401
from peftkit.model import load_causal_lm, load_classifier, load_tokenizer  # noqa: F401
from peftkit.recipe import CAUSAL_TASKS  # noqa: F401
from peftkit.runfolder import ADAPTER_DIR, LABEL_MAP_FILE, label_names_of, load_run  # noqa: F401
from peftkit.sft_data import pair, resolve_label_words  # noqa: F401
from peftkit.sft_encode import apply_tokenizer_settings, encoder_for, fit_text  # noqa: F401
