# LLaVA finetune with Qwen2.5-7B-Instruct and CLIP ViT-L/14-336: 4-bit nf4 QLoRA on the LLM,
# LoRA on the vision encoder, projector trained, loaded from the pretrain stage
# (configs/llava_qwen2_5_7b_instruct_pretrain.py). Same structure as xtuner's shipped
# llava_internlm2_chat_7b_qlora_clip_vit_large_p14_336_lora_e1_gpu8_finetune, with the
# plugin's "qwen2.5" profile: tokenizer checked (no bos; eos <|im_end|>, pad <|endoftext|>),
# ChatML template with Qwen2.5's default system prompt, EvaluateChatHook that stops on
# <|im_end|>/<|endoftext|> ids.
#
#   xtuner train configs/llava_qwen2_5_7b_instruct_qlora.py --deepspeed deepspeed_zero2
#
# Paths are the variables of PART 1; override them with --cfg-options (every place that
# uses a path follows), e.g. --cfg-options llm_name_or_path=/models/Qwen2.5-7B-Instruct
import torch
from mmengine.hooks import (CheckpointHook, DistSamplerSeedHook, IterTimerHook,
                            LoggerHook, ParamSchedulerHook)
from mmengine.optim import AmpOptimWrapper, CosineAnnealingLR, LinearLR
from peft import LoraConfig
from torch.optim import AdamW
from transformers import (AutoModelForCausalLM, BitsAndBytesConfig, CLIPImageProcessor,
                          CLIPVisionModel)

from xtuner.dataset.collate_fns import default_collate_fn
from xtuner.dataset.map_fns import llava_map_fn
from xtuner.dataset.samplers import LengthGroupedSampler
from xtuner.engine.hooks import DatasetInfoHook
from xtuner.engine.runner import TrainLoop
from xtuner.model import LLaVAModel
from xtuner_llava_swap.data import LLaVASwapDataset
from xtuner_llava_swap.hooks import EvaluateChatHook
from xtuner_llava_swap.profiles import PROMPT_TEMPLATE, template_map_fn_factory
from xtuner_llava_swap.tokenizers import build_tokenizer

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
# Model
llm_name_or_path = "Qwen/Qwen2.5-7B-Instruct"
visual_encoder_name_or_path = "openai/clip-vit-large-patch14-336"
# Specify the pretrained pth
pretrained_pth = "./work_dirs/llava_qwen2_5_7b_instruct_pretrain/iter_2181.pth"

# Data
data_path = "./data/llava_data/LLaVA-Instruct-150K/llava_v1_5_mix665k.json"
image_folder = "./data/llava_data/llava_images"
prompt_template = PROMPT_TEMPLATE.qwen2_5  # profile "qwen2.5": ChatML, stop words, default system
# The whole LLM sequence, image tokens included: LLaVASwapDataset reads their count
# (576 at 336/14, CLS dropped) from the vision encoder's config and never cuts them.
max_length = 2048

# Scheduler & Optimizer
batch_size = 16  # per_device
accumulative_counts = 1
dataloader_num_workers = 4
max_epochs = 1
optim_type = AdamW
lr = 2e-4
betas = (0.9, 0.999)
weight_decay = 0
max_norm = 1  # grad clip
warmup_ratio = 0.03

# Save
save_steps = 500
save_total_limit = 2  # Maximum checkpoints to keep (-1 means unlimited)

# Evaluate the generation performance during the training
evaluation_freq = 500
# None: the profile's default system prompt ("You are Qwen, created by Alibaba Cloud. ..."),
# in the training data and in the evaluation prompts alike; "" for none.
SYSTEM = None
evaluation_images = "https://llava-vl.github.io/static/images/view.jpg"
evaluation_inputs = ["请描述一下这张照片", "Please describe this picture"]

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
# = tokenizer_dict("qwen2.5", llm_name_or_path): no bos; eos/pad set for base checkpoints too.
tokenizer = dict(
    type=build_tokenizer,
    profile="qwen2.5",
    pretrained_model_name_or_path=llm_name_or_path,
    trust_remote_code=False,
    padding_side="right",
    eos_token="<|im_end|>",
    pad_token="<|endoftext|>",
)

image_processor = dict(
    type=CLIPImageProcessor.from_pretrained,
    pretrained_model_name_or_path=visual_encoder_name_or_path,
    trust_remote_code=True,
)

model = dict(
    type=LLaVAModel,
    freeze_llm=True,
    freeze_visual_encoder=True,
    pretrained_pth=pretrained_pth,
    llm=dict(
        type=AutoModelForCausalLM.from_pretrained,
        pretrained_model_name_or_path=llm_name_or_path,
        trust_remote_code=False,
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
    llm_lora=dict(
        type=LoraConfig,
        r=512,
        lora_alpha=256,
        lora_dropout=0.05,
        bias="none",
        task_type="CAUSAL_LM",
        # every linear layer of a Qwen2 decoder layer
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                        "down_proj"],
    ),
    visual_encoder=dict(
        type=CLIPVisionModel.from_pretrained,
        pretrained_model_name_or_path=visual_encoder_name_or_path,
    ),
    visual_encoder_lora=dict(type=LoraConfig, r=64, lora_alpha=16, lora_dropout=0.05, bias="none"),
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
    dataset_map_fn=llava_map_fn,
    template_map_fn=dict(type=template_map_fn_factory, template=prompt_template, system=SYSTEM),
    max_length=max_length,
    pad_image_to_square=True,
)

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=dataloader_num_workers,
    pin_memory=True,
    dataset=llava_dataset,
    sampler=dict(
        type=LengthGroupedSampler,
        length_property="modality_length",
        per_device_batch_size=batch_size * accumulative_counts,
    ),
    collate_fn=dict(type=default_collate_fn),
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
        type=EvaluateChatHook,
        tokenizer=tokenizer,
        image_processor=image_processor,
        every_n_iters=evaluation_freq,
        evaluation_inputs=evaluation_inputs,
        evaluation_images=evaluation_images,
        system=SYSTEM,
        prompt_template=prompt_template,
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
