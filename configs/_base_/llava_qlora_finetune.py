# Base of the LLaVA finetune stage: 4-bit nf4 QLoRA on the LLM, LoRA on the vision encoder
# (CLIP ViT-L/14-336), projector trained, loaded from the pretrain stage (pretrained_pth).
# Same structure as xtuner's shipped
# llava_internlm2_chat_7b_qlora_clip_vit_large_p14_336_lora_e1_gpu8_finetune.
#
# It is the pretrain base (llava_pretrain.py: model, tokenizer, image processor, schedule,
# hooks, runtime) with what the finetune stage changes: the instruction data, batch size
# and learning rate, the LoRA adapters, the projector loaded from the pretrain stage, images
# padded to square, samples grouped by length.
#
# Not a config to train with: it names no LLM. A leaf (configs/llava_*_qlora.py) inherits
# it with read_base and calls xtuner_llava_swap.training.configs.swap_llm with its LLM profile and
# path (and its pretrain checkpoint), which fills in every place marked "set by swap_llm".
from mmengine.config import read_base
from peft import LoraConfig

from xtuner.dataset.samplers import LengthGroupedSampler

with read_base():
    from .llava_pretrain import *  # noqa: F401,F403

#######################################################################
#                 Settings this stage changes                         #
#######################################################################
# The projector of the pretrain stage, trained for this LLM: set by swap_llm
pretrained_pth = None

data_path = "./data/llava_data/LLaVA-Instruct-150K/llava_v1_5_mix665k.json"
image_folder = "./data/llava_data/llava_images"

batch_size = 16  # per_device
lr = 2e-4

#######################################################################
#              The parts that read them, and the adapters             #
#######################################################################
model.update(
    pretrained_pth=pretrained_pth,
    llm_lora=dict(
        type=LoraConfig,
        r=512,
        lora_alpha=256,
        lora_dropout=0.05,
        bias="none",
        task_type="CAUSAL_LM",
        target_modules=None,  # every linear layer of the LLM's blocks: set by swap_llm
    ),
    visual_encoder_lora=dict(type=LoraConfig, r=64, lora_alpha=16, lora_dropout=0.05, bias="none"),
)

llava_dataset.update(data_path=data_path, image_folder=image_folder, pad_image_to_square=True)

train_dataloader.update(batch_size=batch_size, dataset=llava_dataset)
train_dataloader["sampler"] = dict(  # replaced, not merged into the pretrain's DefaultSampler
    type=LengthGroupedSampler,
    length_property="modality_length",
    per_device_batch_size=batch_size * accumulative_counts,
)

optim_wrapper.optimizer.update(lr=lr)

custom_hooks[1].update(pad_image_to_square=True)  # EvaluateChatHook, as llava_dataset
