"""How much each experiment may spend: model sizes, training steps, sentence counts and lengths, per budget."""

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Budget:
    """The knobs of a run of the experiments. `quick` fits 20 minutes on a 2-core CPU with one thread, `full` is
    longer, `tiny` is for the tests. Model fields are `VaswaniConfig` overrides of the `small` preset."""

    name: str
    seed: int = 0
    # Multi30k En-De (experiments 1-4, 6): one BPE vocabulary learned once per run, from `train_pairs` pairs.
    vocab_size: int = 4000
    train_pairs: int | None = None  # None: all ~29k training pairs
    eval_pairs: int = 200  # validation sentences for the loss, test sentences for greedy BLEU
    max_tokens: int = 1024  # padded source + target tokens per batch (Sec. 5.1)
    model: dict = field(default_factory=dict)
    train_steps: int = 350  # each Multi30k model; the paper trains base models 100k steps
    warmup_steps: int = 100
    lr_scale: float = 0.4  # on Eq. 3: peak 3.5e-3 at d_model 128 and 100 warmup steps
    eval_points: int = 5  # validation losses along each training run
    # Experiment 1: the d_k sweep, at d_model 256 with 256 / d_k heads, probed for its first steps.
    probe_steps: int = 20
    probe_every: int = 5
    # Experiment 2: synthetic copy / reverse, trained on lengths 1..synthetic_length, tested up to twice that.
    synthetic_model: dict = field(default_factory=dict)
    synthetic_symbols: int = 20
    synthetic_length: int = 10
    synthetic_steps: int = 300
    synthetic_batch: int = 64
    synthetic_test: int = 200  # test sequences per length bucket
    # Experiment 5: cost of one layer against sequence length.
    cost_lengths: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
    cost_d_model: int = 512
    cost_repeats: int = 3

    def to_dict(self) -> dict:
        return asdict(self)


# Half the small preset's width and depth: a step of 1,024 tokens takes about 0.3 s on one thread, so the nine
# Multi30k models of a quick run train in about 12 minutes. 16 heads give d_k 8.
_MULTI30K_MODEL = dict(d_model=128, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=512, decoder_ffn_dim=512)
_SYNTHETIC_MODEL = dict(
    d_model=64,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=256,
    decoder_ffn_dim=256,
    dropout=0.0,
)
_TINY_MODEL = dict(
    d_model=32,
    encoder_layers=1,
    decoder_layers=1,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    dropout=0.0,
)

BUDGETS: dict[str, Budget] = {
    "tiny": Budget(
        name="tiny",
        vocab_size=400,
        train_pairs=300,
        eval_pairs=20,
        max_tokens=512,
        model=_TINY_MODEL,
        train_steps=8,
        warmup_steps=4,
        lr_scale=0.05,  # peak 4.4e-3 at d_model 32
        eval_points=2,
        probe_steps=4,
        probe_every=2,
        synthetic_model=_TINY_MODEL,
        synthetic_length=6,
        synthetic_steps=30,
        synthetic_batch=32,
        synthetic_test=16,
        cost_lengths=(64, 128, 256, 512),
        cost_d_model=64,
        cost_repeats=1,
    ),
    "quick": Budget(name="quick", model=_MULTI30K_MODEL, synthetic_model=_SYNTHETIC_MODEL),
    "full": Budget(  # the small preset itself, about 2.5 hours
        name="full",
        vocab_size=8000,
        eval_pairs=1000,
        max_tokens=2048,
        train_steps=1000,
        warmup_steps=300,
        lr_scale=0.4,  # peak 1.4e-3 at d_model 256
        eval_points=10,
        probe_steps=100,
        probe_every=10,
        synthetic_model=_SYNTHETIC_MODEL,
        synthetic_steps=2000,
        synthetic_test=500,
        cost_repeats=5,
    ),
}
