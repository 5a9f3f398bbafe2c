# Base of the LLaVA pretrain stage (projector only): the LLM (4-bit nf4, frozen) and the
# vision encoder (CLIP ViT-L/14-336, frozen) are not trained. Same structure as xtuner's
# shipped llava_internlm2_chat_7b_clip_vit_large_p14_336_e1_gpu8_pretrain, with the
# plugin's model, dataset, map function, collate function and evaluation hook.
#
# Not a config to train with: it names no LLM. A leaf (configs/llava_*_pretrain.py) inherits
# it with read_base and calls xtuner_llava_swap.training.configs.swap_llm with its LLM profile and
# path, which fills in every place marked "set by swap_llm" below (the dicts here are built
# with this file's values before the leaf's own lines run).
import torch
from mmengine.dataset import DefaultSampler
from mmengine.hooks import (CheckpointHook, DistSamplerSeedHook, IterTimerHook,
                            LoggerHook, ParamSchedulerHook)
from mmengine.optim import AmpOptimWrapper, CosineAnnealingLR, LinearLR
from torch.optim import AdamW
from transformers import (AutoModelForCausalLM, BitsAndBytesConfig, CLIPImageProcessor,
                          CLIPVisionModel)

from xtuner.engine.hooks import DatasetInfoHook
from xtuner.engine.runner import TrainLoop
from xtuner_llava_swap.data import LLaVASwapDataset, llava_format_map_fn
from xtuner_llava_swap.data.collate import llava_collate_fn
from xtuner_llava_swap.training.hooks import EvaluateChatHook
from xtuner_llava_swap.training.llava_model import LLaVASwapModel
from xtuner_llava_swap.profiles import template_map_fn_factory
from xtuner_llava_swap.training.tokenizers import build_tokenizer

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
# Model
llm_name_or_path = None  # set by swap_llm
visual_encoder_name_or_path = "openai/clip-vit-large-patch14-336"

# Data
data_path = "./data/llava_data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json"
image_folder = "./data/llava_data/LLaVA-Pretrain/images"
prompt_template = None  # the profile's (ChatML, stop words, default system): set by swap_llm
# The whole LLM sequence, image tokens included: LLaVASwapDataset reads their count
# (576 at 336/14, CLS dropped) from the vision encoder's config and never cuts them.
max_length = 2048

# Scheduler & Optimizer
batch_size = 32  # per_device
accumulative_counts = 1
dataloader_num_workers = 4
max_epochs = 1
optim_type = AdamW
lr = 1e-3
betas = (0.9, 0.999)
weight_decay = 0
max_norm = 1  # grad clip
warmup_ratio = 0.03

# Save
save_steps = 500
save_total_limit = 2  # Maximum checkpoints to keep (-1 means unlimited)

# Evaluate the generation performance during the training
evaluation_freq = 500
# None: the profile's default system prompt, in the training data and in the evaluation
# prompts alike; "" for none (swap_llm's `system=` argument).
SYSTEM = None
evaluation_images = "https://llava-vl.github.io/static/images/view.jpg"
evaluation_inputs = ["请描述一下这张照片", "Please describe this picture"]

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
# swap_llm makes it tokenizer_dict(profile, llm_name_or_path): the profile's bos/eos/pad
# injection, checked against the profile every time xtuner builds it.
tokenizer = dict(type=build_tokenizer, pretrained_model_name_or_path=llm_name_or_path,
                 padding_side="right")

image_processor = dict(
    type=CLIPImageProcessor.from_pretrained,
    pretrained_model_name_or_path=visual_encoder_name_or_path,
    trust_remote_code=True,
)

# xtuner's LLaVAModel with the features the tower selects and any number of images per
# sample (swap_vision_tower names another tower); loads xtuner's CLIP checkpoints unchanged.
model = dict(
    type=LLaVASwapModel,
    vision_tower="clip-vit-large-336",
    freeze_llm=True,
    freeze_visual_encoder=True,
    llm=dict(
        type=AutoModelForCausalLM.from_pretrained,
        pretrained_model_name_or_path=llm_name_or_path,  # and trust_remote_code: swap_llm
        torch_dtype=torch.float16,
        quantization_config=dict(
            type=BitsAndBytesConfig,
            load_in_4bit=True,
            load_in_8bit=False,
            llm_int8_threshold=6.0,
            llm_int8_has_fp16_weight=False,
            bnb_4bit_compute_dtype=torch.float16,
            bnb_4bit_use_double_quant=True,
            bnb_4bit_quant_type="nf4",
        ),
    ),
    visual_encoder=dict(
        type=CLIPVisionModel.from_pretrained,
        pretrained_model_name_or_path=visual_encoder_name_or_path,
    ),
)

#######################################################################
#                      PART 3  Dataset & Dataloader                   #
#######################################################################
llava_dataset = dict(
    type=LLaVASwapDataset,
    data_path=data_path,
    image_folder=image_folder,
    tokenizer=tokenizer,
    image_processor=image_processor,
    # the plugin's: a sample whose <image> count differs from its images is skipped and
    # counted (image_count_mismatch), never rewritten as xtuner's llava_map_fn would
    dataset_map_fn=llava_format_map_fn,
    template_map_fn=dict(type=template_map_fn_factory, template=prompt_template, system=SYSTEM),
    max_length=max_length,
    pad_image_to_square=False,
    # True: whole samples packed into sequences of up to max_length positions (image tokens
    # counted), each sample kept apart by LLaVASwapModel (docs/packing.md); lower batch_size
    # to match: one item is then a full sequence
    pack_to_max_length=False,
)

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=dataloader_num_workers,
    pin_memory=True,
    dataset=llava_dataset,
    sampler=dict(type=DefaultSampler, shuffle=True),
    collate_fn=dict(type=llava_collate_fn),  # any number of images per sample (max_images)
)

#######################################################################
#                    PART 4  Scheduler & Optimizer                    #
#######################################################################
optim_wrapper = dict(
    type=AmpOptimWrapper,
    optimizer=dict(type=optim_type, lr=lr, betas=betas, weight_decay=weight_decay),
    clip_grad=dict(max_norm=max_norm, error_if_nonfinite=False),
    accumulative_counts=accumulative_counts,
    loss_scale="dynamic",
    dtype="float16",
)

param_scheduler = [
    dict(type=LinearLR, start_factor=1e-5, by_epoch=True, begin=0,
         end=warmup_ratio * max_epochs, convert_to_iter_based=True),
    dict(type=CosineAnnealingLR, eta_min=0.0, by_epoch=True,
         begin=warmup_ratio * max_epochs, end=max_epochs, convert_to_iter_based=True),
]

train_cfg = dict(type=TrainLoop, max_epochs=max_epochs)

#######################################################################
#                           PART 5  Runtime                           #
#######################################################################
# Log the dialogue periodically during the training process, optional
custom_hooks = [
    dict(type=DatasetInfoHook, tokenizer=tokenizer),
    dict(
        type=EvaluateChatHook,  # stop words: the profile's
        tokenizer=tokenizer,
        image_processor=image_processor,
        every_n_iters=evaluation_freq,
        evaluation_inputs=evaluation_inputs,
        evaluation_images=evaluation_images,
        system=SYSTEM,
        prompt_template=prompt_template,
        pad_image_to_square=False,  # as llava_dataset
        generation_kwargs=dict(do_sample=True, temperature=0.1, top_p=0.75, top_k=40),
    ),
]

default_hooks = dict(
    timer=dict(type=IterTimerHook),
    logger=dict(type=LoggerHook, log_metric_by_epoch=False, interval=10),
    param_scheduler=dict(type=ParamSchedulerHook),
    checkpoint=dict(type=CheckpointHook, by_epoch=False, interval=save_steps,
                    max_keep_ckpts=save_total_limit),
    sampler_seed=dict(type=DistSamplerSeedHook),
)

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="nccl"),
)

visualizer = None
log_level = "INFO"
load_from = None
resume = False
randomness = dict(seed=None, deterministic=False)
log_processor = dict(by_epoch=False)
