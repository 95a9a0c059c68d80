"""MoE-Adapters: a mixture of adapter experts in every block of CLIP's towers, a router per task, and a
Distribution Discriminative Auto-Selector (DDAS) that sends an input to the adapted model or to frozen CLIP.

Yu et al., "Boosting Continual Learning of Vision-Language Models via Mixture-of-Experts Adapters", CVPR 2024
(arXiv 2403.11549). Their code, JiazuoYu/MoE-Adapters4CL at 4572d97 (mtil/), as followed here:
- Experts: in every block of both towers (`--ffn_adapt_where AdapterDoubleEncoder`, clip/model.py l. 570,
  642-655), `experts` adapters (22: train_full_shot_router11_experts22_1000iters.sh `num=22`), each
  x -> 0.1 · up(dropout_0.1(ReLU(down(x)))), down d -> 64 (`--ffn_num`, args.py l. 304; adapter.py l. 35),
  down's weight Kaiming-uniform, the rest zero (adapter.py l. 42-47; model.py l. 339-345). They read the
  block's residual stream after attention and are added beside its MLP: x + mlp(ln_2(x)) + Σ g_e · E_e(x)
  (model.py l. 465, 495-511).
- Router: one per task (model.py l. 333-338), W_gate and W_noise (d x experts, zero), on the block's first
  token (the class token; the text's start token, l. 474). Noisy top-k gating (l. 429-460): logits x W_gate, in
  training plus N(0, 1) · (softplus(x W_noise) + 0.01); the top `top_k` (2, args.py l. 324) softmaxed, the
  rest zero. The load-balancing loss it computes (l. 481-483) is never returned, so not trained on: not here.
- Trained per task: the experts, the task's router (finetune.py l. 84-113); after the task, in every block of
  each tower the 2 experts its router picked most often are frozen for every later task (l. 194-220, 90-103).
- Loss: cross-entropy, label-smoothed (`--ls 0.2`), of exp(logit_scale) · cos(image, prompt) over the task's
  class prompts, one template, both embedded with the task's router (finetune.py l. 137, 172-182).
- DDAS (AutoEncoder.py, evaluation.py l. 44-85): per task an autoencoder Linear(n, 100) + ReLU,
  Linear(100, n) + sigmoid (l. 13-31) trained with MSE to reconstruct sigmoid(features) (Adam, lr 0.01 decayed
  x0.1 every 10 epochs, weight decay 1e-4, batch 64: l. 160, 180, 49-54; 300 iterations for each MTIL task in
  the script, 1000 for its TinyImageNet one). At test the autoencoder of least error names the router; an error
  above the threshold (0.0655, the script's) sends the input to frozen CLIP, as does its autoencoder 0, trained
  on TinyImageNet (evaluation.py l. 59-73). The image and the prompts then go through that router (l. 73-75, 26-34).

Here: each task's head scores the MoE-Adapters way in one plain linear head. The backbone's features are
(1 + tasks) blocks of the embedding width, one filled: block 0 with frozen CLIP's embedding when DDAS picks
frozen CLIP, block k with the image embedded through router k. A head's rows hold, block by block, its classes'
prompts embedded by frozen CLIP and through each learned router; on the L2-normalised features, a row gives the
cosine to the prompt of the image's own route, times exp(logit_scale). Every head, and the probes' zero-shot
heads, are rebuilt after each task (the shared experts moved). CLIP's own weights never change.
What differs: the autoencoders read frozen CLIP's L2-normalised image embedding times √n (their AlexNet conv
features need weights from the network), DDAS decides per image (theirs per test batch: a batch's mean
error), the threshold is by default each task's own, the largest error of its training images (theirs one
number, fit to AlexNet features); no autoencoder of pre-training-like images (TinyImageNet); the heads use the
task's template ensemble (their evaluation's too) and training its first template; every image of a batch
goes through the top-k experts in one pass per expert (theirs dispatches, the same sums).
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from continual.datasets.prompts import readable_names
from continual.datasets.tasks import TaskData
from continual.evaluate import extract_features
from continual.methods import Context
from continual.methods.contract import Method
from continual.methods.options import MoEAdaptersOptions
from continual.models import Backbone, Head, ModelError, TaskModel
from continual.models.clip import OpenClipVisual, text_head, text_tower
from continual.train import Batch, FitStats, Trainer, use_bf16

ADAPTER_SCALE, ADAPTER_DROPOUT = 0.1, 0.1  # adapter_scalar=0.1, dropout=0.1 (model.py l. 340-343)
NOISE_EPSILON = 1e-2  # model.py l. 308, 443
CODE = 100  # the autoencoder's code width (AutoEncoder.py l. 19)
# the autoencoders' Adam: lr, its x0.1 decay every 10 epochs, weight decay (AutoEncoder.py l. 160, 180, 49-54);
# batch 64 (args.py l. 11)
DDAS_LR, DDAS_DECAY, DDAS_WEIGHT_DECAY, DDAS_BATCH = 0.01, 10, 1e-4, 64


class Adapter(nn.Module):
    def __init__(self, d: int, width: int):
        super().__init__()
        self.down, self.up = nn.Linear(d, width), nn.Linear(width, d)  # down keeps nn.Linear's Kaiming draw
        with torch.no_grad():
            for p in (self.down.bias, self.up.weight, self.up.bias):
                p.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.dropout(F.relu(self.down(x)), ADAPTER_DROPOUT, self.training)) * ADAPTER_SCALE


class MoELayer(nn.Module):
    """One block's experts and its routers (one per task); `frozen` the experts no longer trained."""

    def __init__(self, d: int, *, experts: int, width: int, routers: int, top_k: int):
        super().__init__()
        self.experts = nn.ModuleList(Adapter(d, width) for _ in range(experts))
        self.gate = nn.ParameterList(torch.zeros(d, experts) for _ in range(routers))
        self.noise = nn.ParameterList(torch.zeros(d, experts) for _ in range(routers))
        self.register_buffer("frozen", torch.zeros(experts, dtype=torch.bool))
        self.top_k = top_k
        self.counts: torch.Tensor | None = None  # while a task trains: how often each expert was picked

    def gates(self, token: torch.Tensor, route: int) -> torch.Tensor:
        """(batch, experts): the top-k softmaxed, zero elsewhere (noisy_top_k_gating, model.py l. 429-460)."""
        token = token.float()
        logits = token @ self.gate[route]
        if self.training:
            std = F.softplus(token @ self.noise[route]) + NOISE_EPSILON
            logits = logits + torch.randn_like(logits) * std
        top, index = logits.topk(self.top_k, dim=1)
        return torch.zeros_like(logits).scatter(1, index, top.softmax(dim=1))

    def forward(self, x: torch.Tensor, route: int) -> torch.Tensor:
        gates = self.gates(x[:, 0], route)
        if self.counts is not None and self.training:
            self.counts += (gates > 0).sum(0)
        out = torch.zeros_like(x)
        for e in torch.nonzero(gates.sum(0)).flatten().tolist():  # each picked expert on the inputs that picked it
            rows = torch.nonzero(gates[:, e]).flatten()
            y = gates[rows, e, None, None] * self.experts[e](x[rows])
            out = out.index_add(0, rows, y.to(out.dtype))
        return out


def run_blocks(blocks, layers, x: torch.Tensor, route: int, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """open_clip's ResidualAttentionBlock.forward with the experts beside each MLP (batch-first)."""
    for block, layer in zip(blocks, layers, strict=True):
        x = x + block.ls_1(block.attention(block.ln_1(x), attn_mask=attn_mask))
        x = x + block.ls_2(block.mlp(block.ln_2(x))) + layer(x, route)
    return x


def encode_image(visual: nn.Module, layers, x: torch.Tensor, route: int) -> torch.Tensor:
    """VisionTransformer.forward through router `route`."""
    pooled, _ = visual._pool(run_blocks(visual.transformer.resblocks, layers, visual._embeds(x), route))
    return pooled @ visual.proj if visual.proj is not None else pooled


def encode_text(clip: nn.Module, layers, tokens: torch.Tensor, route: int) -> torch.Tensor:
    """CLIP.encode_text through router `route` (the plain one with no layers: towers `image`)."""
    if len(layers) == 0:
        return clip.encode_text(tokens)
    from open_clip.transformer import text_global_pool

    dtype = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(tokens).to(dtype) + clip.positional_embedding.to(dtype)
    x = clip.ln_final(run_blocks(clip.transformer.resblocks, layers, x, route, attn_mask=clip.attn_mask))
    x = text_global_pool(x, tokens, clip.text_pool_type, eos_token_id=getattr(clip, "text_eos_id", None))
    return x @ clip.text_projection if not isinstance(clip.text_projection, nn.Linear) else clip.text_projection(x)


class AutoEncoder(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(n, CODE), nn.ReLU())
        self.decoder = nn.Sequential(nn.Linear(CODE, n), nn.Sigmoid())

    def errors(self, f: torch.Tensor) -> torch.Tensor:
        """Each input's mean squared reconstruction error."""
        return (self.decoder(self.encoder(f)) - f).pow(2).mean(1)


def ddas_input(z: torch.Tensor) -> torch.Tensor:
    """What the autoencoders reconstruct: sigmoid of the L2-normalised embedding times √n (unit spread per entry)."""
    return torch.sigmoid(F.normalize(z.float(), dim=1) * math.sqrt(z.shape[1]))


class MoEBackbone(Backbone):
    """Frozen CLIP's image tower (`visual`: the same state_dict keys as the backbone it wraps) whose features are
    the (1 + tasks) blocks of the method's route for each image (the module docstring says which)."""

    def __init__(self, plain: OpenClipVisual, method: MoEAdapters):
        super().__init__(family=plain.family, feature_dim=plain.feature_dim * (1 + method.routers),
                         image_size=plain.image_size, normalize_features=True,
                         mean=plain.pixel_mean.flatten().tolist(), std=plain.pixel_std.flatten().tolist())
        self.visual = plain.visual.requires_grad_(False)
        self._text, self._method = plain._text, _Outside(method)  # outside the module tree: not in state_dict

    @property
    def method(self) -> MoEAdapters:
        return self._method.method

    def forward(self, x: torch.Tensor, taps: list[int] | None = None) -> torch.Tensor:
        if taps is not None:
            raise ModelError("arch", "moe_adapters' model has no feature taps")
        z = self.visual(x)
        route = self.method.ddas(z)
        d = z.shape[1]
        out = z.new_zeros(len(z), self.feature_dim)
        for r in route.unique().tolist():
            rows = torch.nonzero(route == r).flatten()
            f = z[rows] if r < 0 else encode_image(self.visual, self.method.moe.image, x[rows], r)
            out[rows, (r + 1) * d : (r + 2) * d] = f.to(out.dtype)
        return out

    @property
    def tap_names(self) -> list[str]:
        raise ModelError("arch", "moe_adapters' model has no feature taps")

    def train(self, mode: bool = True) -> MoEBackbone:
        super().train(mode)
        self.method.moe.train(mode)  # the experts' dropout and the routers' noise: in training only
        return self


class MoEAdapters(Method):
    def __init__(self, options: MoEAdaptersOptions, *, pretrained: Backbone, context: Context | None = None):
        super().__init__(options, pretrained=pretrained)
        if context is None:
            raise ValueError("moe_adapters embeds every task's prompts: build it with context=Context(...)")
        self.context, self.pretrained, self.text = context, pretrained, text_tower(pretrained)
        self.routers = len(context.tasks)  # one router per task (model.py l. 336)
        self.moe: nn.Module | None = None  # built by the first task, from the step's seeded RNG
        self.autoencoders = nn.ModuleList()
        self.routes: list[int] = []  # each autoencoder's router (its task's place in the sequence)
        self.thresholds: list[float] = []
        self.route: int | None = None  # the router training now
        self.tokens: torch.Tensor | None = None
        self.zero_shot_probes: dict[str, Head] | None = None

    @classmethod
    def problems(cls, options: MoEAdaptersOptions, backbone: Backbone) -> list[tuple[str, str]]:
        from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

        visual = getattr(backbone, "visual", None)
        if not isinstance(visual, VisionTransformer) or visual.attn_pool is not None:
            return [("", f"its experts go in the blocks of a ViT image tower (open_clip's VisionTransformer); this "
                         f"model's is {type(visual).__name__}")]
        towers = [visual.transformer]
        if options.towers == "both":
            clip = text_tower(backbone).model
            if not hasattr(clip, "transformer"):
                return [("towers", f"{type(clip).__name__}'s text tower is not open_clip's own transformer: "
                                   "towers: image puts experts in the image tower only")]
            towers.append(clip.transformer)
        if not all(getattr(t, "batch_first", False) and all(isinstance(b, ResidualAttentionBlock) for b in t.resblocks)
                   for t in towers):
            return [("", "its experts go in open_clip's batch-first ResidualAttentionBlocks; this model has others")]
        return []

    def build(self, device: torch.device) -> nn.Module:
        o, clip = self.options, self.text.model

        def layers(transformer) -> nn.ModuleList:
            return nn.ModuleList(MoELayer(transformer.width, experts=o.experts, width=o.width, routers=self.routers,
                                          top_k=o.top_k) for _ in transformer.resblocks)

        moe = nn.Module()
        moe.image = layers(self.pretrained.visual.transformer)
        moe.text = layers(clip.transformer) if o.towers == "both" else nn.ModuleList()
        return moe.to(device)

    def fit_task(self, model: TaskModel, task: TaskData, *, step: int, trainer: Trainer) -> FitStats:
        began, device = time.perf_counter(), trainer.device
        if self.moe is None:
            self.moe = self.build(device)
        wrap = not isinstance(model.backbone, MoEBackbone)
        if wrap:
            model.backbone = MoEBackbone(model.backbone, self)
        self.route = next(i for i, t in enumerate(self.context.tasks) if t.name == task.name)
        self.fit_autoencoder(task, trainer)
        if wrap:
            self.set_heads(model, device)  # the heads so far read the plain features
        layers = [*self.moe.image, *self.moe.text]
        for layer in layers:
            layer.counts = torch.zeros(len(layer.experts), dtype=torch.long, device=device)
            for e, expert in enumerate(layer.experts):
                expert.requires_grad_(not bool(layer.frozen[e]))
            for r in range(self.routers):
                layer.gate[r].requires_grad_(r == self.route)
                layer.noise[r].requires_grad_(r == self.route)
        for head in model.heads.values():
            head.requires_grad_(False)  # the loss reads the prompts, not the heads
        names = readable_names(task.dataset, task.class_names)
        template = self.context.templates[("tasks", task.name)][0]  # one template in training (finetune.py l. 137)
        self.tokens = self.text.tokenizer([template.format(n) for n in names]).to(device)
        trained = [p for p in self.moe.parameters() if p.requires_grad]
        try:
            stats = trainer.fit(model, task, loss_terms=self.loss_terms, extra_parameters=trained)
        finally:
            self.moe.eval()
        for layer in layers:  # the most picked experts of this task, frozen from now on (finetune.py l. 194-220)
            if self.options.freeze_top:
                layer.frozen[layer.counts.topk(min(self.options.freeze_top, len(layer.experts))).indices] = True
            layer.counts = None
        self.set_heads(model, device)
        stats.seconds = time.perf_counter() - began
        stats.extra.update({"moe_frozen_experts": int(sum(int(layer.frozen.sum()) for layer in layers)),
                            "ddas_threshold": self.thresholds[-1]})
        return stats

    def loss_terms(self, model: TaskModel, batch: Batch) -> dict[str, torch.Tensor]:
        clip = self.text.model
        image = F.normalize(encode_image(model.backbone.visual, self.moe.image, batch.x, self.route), dim=-1)
        text = F.normalize(encode_text(clip, self.moe.text, self.tokens, self.route), dim=-1)
        logits = clip.logit_scale.exp() * image @ text.T  # finetune.py l. 172-182
        y = batch.y - model.label_offset(batch.task)  # the task's own classes
        return {"ce": F.cross_entropy(logits.float(), y, label_smoothing=batch.label_smoothing)}

    def fit_autoencoder(self, task: TaskData, trainer: Trainer) -> None:
        """DDAS: the task's autoencoder on frozen CLIP's features of its training images, and its threshold."""
        device = trainer.device
        f = ddas_input(extract_features(self.pretrained, task.train, batch_size=trainer.eval_batch_size, device=device,
                                        bf16=use_bf16(trainer.training, device)))
        ae = AutoEncoder(f.shape[1]).to(device)
        optimizer = torch.optim.Adam(ae.parameters(), lr=DDAS_LR, weight_decay=DDAS_WEIGHT_DECAY)
        per_epoch, order = math.ceil(len(f) / DDAS_BATCH), None
        for i in range(self.options.ddas_steps):
            if i % per_epoch == 0:
                order = torch.randperm(len(f), device=device)
            for group in optimizer.param_groups:  # exp_lr_scheduler (AutoEncoder.py l. 49-54, 180)
                group["lr"] = DDAS_LR * 0.1 ** (i // per_epoch // DDAS_DECAY)
            rows = order[(i % per_epoch) * DDAS_BATCH : (i % per_epoch + 1) * DDAS_BATCH]
            loss = ae.errors(f[rows]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        ae.requires_grad_(False).eval()
        with torch.no_grad():
            own = float(ae.errors(f).max())
        self.autoencoders.append(ae)
        self.routes.append(self.route)
        self.thresholds.append(own if self.options.threshold is None else self.options.threshold)

    @torch.no_grad()
    def ddas(self, z: torch.Tensor) -> torch.Tensor:
        """Each image's router, -1 for frozen CLIP: the autoencoder of least error, unless above its threshold."""
        if not self.autoencoders:
            return torch.full((len(z),), -1, dtype=torch.long, device=z.device)
        f = ddas_input(z)
        errors = torch.stack([ae.errors(f) for ae in self.autoencoders])
        least, best = errors.min(0)
        routes = torch.tensor(self.routes, device=z.device)[best]
        return torch.where(least <= torch.tensor(self.thresholds, device=z.device)[best], routes, -1)

    @torch.no_grad()
    def head(self, data: TaskData, group: str, device: torch.device) -> Head:
        """Its classes' prompts by frozen CLIP (block 0) and through each learned router (block 1 + router)."""
        import open_clip

        names = readable_names(data.dataset, data.class_names)
        templates = self.context.templates[(group, data.name)]
        clip = self.text.model
        blocks = [text_head(clip, self.text.tokenizer, names, templates, device=device).linear.weight]
        for r in range(self.routers):
            if r not in self.routes:  # never picked by DDAS
                blocks.append(torch.zeros_like(blocks[0]))
                continue
            routed = _Routed(clip, self.moe.text, r)
            w = open_clip.build_zero_shot_classifier(routed, self.text.tokenizer, names, list(templates), device=device)
            blocks.append(w.T * clip.logit_scale.exp())
        weight = torch.cat(blocks, dim=1)
        head = Head(weight.shape[1], len(names), normalize=True).to(device)
        head.linear.weight.copy_(weight)
        head.linear.bias.zero_()
        return head.requires_grad_(False)

    def set_heads(self, model: TaskModel, device: torch.device) -> None:
        self.moe.eval()
        for task in self.context.tasks:
            model.heads[task.name] = self.head(task, "tasks", device)
        self.zero_shot_probes = {p.name: self.head(p, "probes", device) for p in self.context.probes}

    def modules(self) -> list[nn.Module]:
        return [self.autoencoders] + ([self.moe] if self.moe is not None else [])

    def state_dict(self) -> dict:
        if self.moe is None:
            return {}
        return {"moe": {k: v.detach().cpu().clone() for k, v in self.moe.state_dict().items()},
                "autoencoders": [{k: v.detach().cpu().clone() for k, v in ae.state_dict().items()}
                                 for ae in self.autoencoders],
                "routes": list(self.routes), "thresholds": list(self.thresholds)}

    def load_state_dict(self, state: dict, *, model: TaskModel, trainer: Trainer) -> None:
        if not state:
            return
        device = trainer.device
        self.moe = self.build(device)
        self.moe.load_state_dict(state["moe"])
        self.moe.eval()
        self.autoencoders = nn.ModuleList()
        for saved in state["autoencoders"]:
            ae = AutoEncoder(saved["decoder.0.weight"].shape[0])
            ae.load_state_dict(saved)
            self.autoencoders.append(ae.to(device).requires_grad_(False).eval())
        self.routes, self.thresholds = list(state["routes"]), list(state["thresholds"])
        if not isinstance(model.backbone, MoEBackbone):
            model.backbone = MoEBackbone(model.backbone, self)
        self.zero_shot_probes = {p.name: self.head(p, "probes", device) for p in self.context.probes}


class _Outside:
    """The method, held by the backbone outside its module tree; deep copies of the backbone share it."""

    def __init__(self, method: MoEAdapters):
        self.method = method

    def __deepcopy__(self, memo) -> _Outside:
        return self


class _Routed:
    """A text tower through one router, as open_clip.build_zero_shot_classifier calls it."""

    def __init__(self, clip: nn.Module, layers: nn.ModuleList, route: int):
        self.clip, self.layers, self.route = clip, layers, route

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = encode_text(self.clip, self.layers, tokens, self.route)
        return F.normalize(x, dim=-1) if normalize else x
