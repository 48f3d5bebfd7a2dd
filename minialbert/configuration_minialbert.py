"""MiniAlbertConfig: the recursive student's architecture, saved as ``config.json``."""

from __future__ import annotations

from transformers import PretrainedConfig

CLASSIFIER_POOLINGS = ("cls", "mean")
LAYER_FORMS = ("bert", "modernbert", "deberta")


class MiniAlbertConfig(PretrainedConfig):
    """One ALBERT-style transformer layer applied ``num_recursions`` times.

    Args:
        vocab_size: token vocabulary; must equal the teacher's tokenizer vocabulary.
        embedding_size: width E of the token embeddings (factorised; projected to ``hidden_size`` when E != H).
        hidden_size: width H of the shared layer.
        num_attention_heads: attention heads of the shared layer; must divide ``hidden_size``.
        intermediate_size: width of the shared feed-forward block.
        num_recursions: how many times the shared layer is applied (N).
        use_adapters: give each recursion two bottleneck adapters of its own (attention input, FFN input).
        adapter_reduction_factor: r; each adapter is H -> H/r -> H.
        recursion_delta_rank: R > 0 gives each recursion its own additive change to every weight of the shared
            layer: a rank-R product for each weight matrix, full vectors for biases and LayerNorms (relaxed
            recursive transformers, Bae et al. 2025); 0 (the original MiniALBERT): every recursion runs the same
            weights.
        hidden_act: activation of the shared feed-forward block ("gelu" is the exact erf GELU).
        hidden_dropout_prob: dropout on embeddings and on each block's output.
        attention_probs_dropout_prob: dropout on the attention probabilities.
        classifier_dropout_prob: dropout before a task head; ``None`` uses ``hidden_dropout_prob``.
        classifier_pooling: what a sentence-level head (classification, regression) reads of the last recursion:
            ``"cls"`` the first token's vector (the original), ``"mean"`` the mean of the real tokens' vectors —
            a sentence-embedding teacher's pooling (all-MiniLM-L6-v2's), set at distillation from the teacher.
        max_position_embeddings: longest sequence the position embeddings cover.
        type_vocab_size: number of token types (segments).
        layer_norm_eps: epsilon of every LayerNorm.
        initializer_range: std of the normal initialisation of weights.
        layer_form: the shared layer's form, its teacher's: ``"bert"`` (post-LayerNorm blocks, GELU feed-forward,
            learned absolute positions and token types: BERT, RoBERTa, ELECTRA, MiniLM) or ``"modernbert"``
            (pre-LayerNorm blocks and a final LayerNorm, GeGLU feed-forward, rotary positions with a global or a
            local sliding-window attention per recursion, no token types; biases only where ``use_bias``).
            ``"deberta"``: DeBERTa-v2/v3's layer — post-LayerNorm blocks like ``bert``, disentangled attention
            (content->position and position->content scores over relative-position buckets, the relative embeddings
            shared by every recursion and read through the recursion's own query and key maps), absolute positions
            only where ``absolute_positions``.
        use_bias: whether the shared layer's linear maps and LayerNorms (and the embeddings' LayerNorm) have biases
            (ModernBERT's have none).
        rope_theta: rotary base of the global-attention recursions (``modernbert`` form).
        local_rope_theta: rotary base of the local-attention recursions.
        local_window: a local recursion attends to keys with |i - j| <= local_window (ModernBERT's
            ``local_attention // 2``).
        local_recursions: the recursions (0-based) that attend locally; the others attend globally.
        relative_span: ``deberta`` form: relative distances fall into 2 x this many buckets (DeBERTa's
            ``position_buckets``, or ``max_relative_positions`` without buckets).
        max_relative_positions: the distance the log buckets reach (DeBERTa's; -1: ``relative_span``, no log).
        pos_att_type: the disentangled terms, a subset of ``["c2p", "p2c"]``.
        relative_norm: a LayerNorm on the relative embeddings (DeBERTa's ``norm_rel_ebd: layer_norm``).
        absolute_positions: ``deberta`` form: also add learned absolute positions to the embeddings (DeBERTa's
            ``position_biased_input``; v3: false). The ``bert`` form always has them, ``modernbert`` never.
        mlm_head_trained: False when the MLM head was never trained (a distillation whose loss read no logits:
            ``loss.mlm`` 0 and no teacher logits); its predictions are then its initialisation's, not a fill-mask.
    """

    model_type = "minialbert"
    # Hugging Face utilities (and the teacher mapping) speak of "layers"; here they are recursions.
    attribute_map = {"num_hidden_layers": "num_recursions"}

    def __init__(
        self,
        vocab_size: int = 30522,
        embedding_size: int = 128,
        hidden_size: int = 768,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        num_recursions: int = 6,
        use_adapters: bool = True,
        adapter_reduction_factor: int = 16,
        recursion_delta_rank: int = 0,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        classifier_dropout_prob: float | None = None,
        classifier_pooling: str = "cls",
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        layer_norm_eps: float = 1e-12,
        initializer_range: float = 0.02,
        pad_token_id: int = 0,
        mlm_head_trained: bool = True,
        layer_form: str = "bert",
        use_bias: bool = True,
        rope_theta: float = 160000.0,
        local_rope_theta: float = 10000.0,
        local_window: int = 64,
        local_recursions: list[int] | None = None,
        relative_span: int = 256,
        max_relative_positions: int = 512,
        pos_att_type: list[str] | None = None,
        relative_norm: bool = True,
        absolute_positions: bool = False,
        **kwargs,
    ):
        # The MLM decoder (H wide) is never tied to the word embeddings (E wide).
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        self.vocab_size = vocab_size
        self.embedding_size = embedding_size
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.num_recursions = num_recursions
        self.use_adapters = use_adapters
        self.adapter_reduction_factor = adapter_reduction_factor
        self.recursion_delta_rank = recursion_delta_rank
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.classifier_dropout_prob = classifier_dropout_prob
        self.classifier_pooling = classifier_pooling
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.mlm_head_trained = mlm_head_trained
        self.layer_form = layer_form
        self.use_bias = use_bias
        self.rope_theta = rope_theta
        self.local_rope_theta = local_rope_theta
        self.local_window = local_window
        self.local_recursions = list(local_recursions or [])
        self.relative_span = relative_span
        self.max_relative_positions = max_relative_positions
        self.pos_att_type = list(["p2c", "c2p"] if pos_att_type is None else pos_att_type)
        self.relative_norm = relative_norm
        self.absolute_positions = absolute_positions
        self.validate()

    def validate(self) -> None:
        """Raise ValueError on an architecture that cannot be built."""
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads ({self.num_attention_heads})"
            )
        if self.classifier_pooling not in CLASSIFIER_POOLINGS:
            raise ValueError(f"classifier_pooling must be one of {', '.join(CLASSIFIER_POOLINGS)}, "
                             f"got {self.classifier_pooling!r}")
        if self.num_recursions < 1:
            raise ValueError(f"num_recursions must be >= 1, got {self.num_recursions}")
        if self.use_adapters and not 1 <= self.adapter_reduction_factor <= self.hidden_size:
            raise ValueError(
                f"adapter_reduction_factor must be in [1, hidden_size={self.hidden_size}], got {self.adapter_reduction_factor}"
            )
        if self.layer_form not in LAYER_FORMS:
            raise ValueError(f"layer_form must be one of {', '.join(LAYER_FORMS)}, got {self.layer_form!r}")
        if self.layer_form != "modernbert" and (self.local_recursions or not self.use_bias):
            raise ValueError(f"layer_form {self.layer_form!r} has biases and global attention: local_recursions must "
                             "be empty and use_bias true")
        if not set(self.pos_att_type) <= {"c2p", "p2c"}:
            raise ValueError(f"pos_att_type must be a subset of ['c2p', 'p2c'], got {self.pos_att_type}")
        bad = [i for i in self.local_recursions if not 0 <= i < self.num_recursions]
        if bad:
            raise ValueError(f"local_recursions must be recursion indices in [0, {self.num_recursions}), got {bad}")
        if self.layer_form == "modernbert" and (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError(f"layer_form 'modernbert' rotates pairs of head dimensions: hidden_size / "
                             f"num_attention_heads ({self.hidden_size // self.num_attention_heads}) must be even")
        if not 0 <= self.recursion_delta_rank <= min(self.hidden_size, self.intermediate_size):
            raise ValueError(f"recursion_delta_rank must be in [0, {min(self.hidden_size, self.intermediate_size)}], "
                             f"got {self.recursion_delta_rank}")
