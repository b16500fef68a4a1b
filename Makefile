# Everything a fresh machine needs: `make demo` (the main job) and `make test` (the suite) set themselves up.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_STEPS ?= 4096

.PHONY: setup test test-random demo bench bench-speed bench-design bench-gpu bench-learning bench-export clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned (constraints.txt): an unpinned torch pulls several GB of CUDA packages
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[all,executorch]"
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# The suite in a shuffled order across all files (pytest-random-order). The order's seed is printed first; rerun
# that order with RANDOM_ORDER_SEED=N. Every test seeds its own RNGs (tests/conftest.py), so any order must pass.
ifeq ($(RANDOM_ORDER_SEED),)
RANDOM_ORDER_SEED := $(shell od -An -N3 -tu4 /dev/urandom | tr -d ' ')
endif
test-random: $(STAMP)
	@echo "test order: RANDOM_ORDER_SEED=$(RANDOM_ORDER_SEED)"
	$(BIN)/python -m pytest --random-order-bucket=global --random-order-seed=$(RANDOM_ORDER_SEED)

# each demo in its own folder under runs/demo (TensorBoard: tensorboard --logdir runs/demo shows every demo apart)
demo: $(STAMP)
	$(BIN)/rlvision compare --env ALE/Pong-v5 \
		--backbones nature_cnn,mobilenetv4_nano,mobilenetv4_nano_rl,mobilenetv4_cpu_rl --steps $(DEMO_STEPS) \
		--eval-episodes 3 --logdir runs/demo/$(shell date +%m%d-%H%M%S)

# The figures in BENCHMARKS.md (about 80 minutes on 2 cores); run on an otherwise idle machine.
BENCH_BACKBONES ?= nature_cnn,impala_cnn,mobilenetv4_nano,mobilenetv4_small,mnv4_conv_small,rest_rl,cyclemlp_rl,conformer_rl
# issue 6: SB3-plain NatureCNN (no rlvision speed path) next to every small backbone with it
PLAIN := channels_last=false,inference_copy=false,fused_optimizer=false
SPEED_BACKBONES := nature_cnn[$(PLAIN)],nature_cnn,mobilenetv4_nano_rl,mobilenetv4_small_rl,mobilenetv4_nano[$(PLAIN)],mobilenetv4_nano,mobilenetv4_small,impala_cnn,mnv4_conv_small,rest_rl,cyclemlp_rl,conformer_rl
IMAGENET_HYBRIDS := nature_cnn,mobilenetv4_nano,rest_lite,rest_small,rest_base,rest_large,cyclemlp_b1,cyclemlp_b2,cyclemlp_b3,cyclemlp_b4,cyclemlp_b5,conformer_tiny,conformer_small,conformer_base
SR_SYN := runs/sr/flexnet_rl-x2-SyntheticPixel-v0/weights.pt
bench: $(STAMP) bench-speed
	$(BIN)/rlvision compare --env ALE/Pong-v5 --backbones $(BENCH_BACKBONES) \
		--steps 3072 --logdir runs/bench-pong --overwrite --no-progress
	$(BIN)/rlvision compare --env ALE/Pong-v5 --backbones nature_cnn \
		--steps 8192 --measure-overhead --logdir runs/bench-overhead --overwrite --no-progress
	$(BIN)/rlvision bench --input 4x84x84 --batches 8,256 --repeats 3 --warmup 1 \
		--backbones $(BENCH_BACKBONES),mnv4_conv_medium,mnv4_hybrid_medium --out runs/bench-backbones
	$(BIN)/rlvision bench --input 4x84x84 --batches 8,32 --repeats 3 --warmup 1 \
		--backbones $(IMAGENET_HYBRIDS) --out runs/bench-backbones-imagenet
	$(BIN)/rlvision compare --env SyntheticPixel-v0 --env-kwargs '{size: 48, grid: 4}' \
		--backbones $(BENCH_BACKBONES) --steps 12288 --eval-episodes 100 --logdir runs/bench-synthetic --overwrite \
		--hyperparams '{n_steps: 64, batch_size: 128, n_epochs: 4, learning_rate: 0.0005, clip_range: 0.2}' \
		--no-progress
	for stage in flexnet_rl transformer_sr_rl; do \
		$(BIN)/rlvision train-sr --env ALE/Pong-v5 --stage $$stage --steps 2000 --no-progress; \
		$(BIN)/rlvision train-sr --env SyntheticPixel-v0 --env-kwargs '{size: 84}' --stage $$stage \
			--steps 2000 --no-progress; done
	$(BIN)/rlvision bench-preprocess --out runs/bench-preprocess
	$(BIN)/rlvision compare --env SyntheticPixel-v0 --env-kwargs '{size: 84, grid: 3}' \
		--low-res 2 --backbones nature_cnn --preprocess none,bicubic,flexnet_rl:$(SR_SYN) --steps 8192 \
		--eval-episodes 100 --logdir runs/bench-lowres --overwrite --no-progress \
		--hyperparams '{n_steps: 64, batch_size: 128, n_epochs: 4, learning_rate: 0.0005, clip_range: 0.2}'

# Issue 6 only (about 35 minutes): the speed path, side by side with the plain formulations, and the norm choice.
LOOP_BACKBONES := nature_cnn,mobilenetv4_cpu_rl,mobilenetv4_cpu_rl[norm=phase_bn],mobilenetv4_cpu_rl[norm=frozen_bn],mobilenetv4_blocks[blocks=cn_c16_k4_s4-er_c32_e2_s2],mobilenetv4_nano_rl,mobilenetv4_small_rl,impala_cnn,mnv4_conv_small,rest_rl,cyclemlp_rl,conformer_rl
bench-speed: $(STAMP)
	# issue 31's instrument: PPO's two regimes per encoder at 56 and 84 px, 1 torch thread (the issue's setting)
	$(BIN)/rlvision bench-speed --threads 1 --loop-backbones '$(LOOP_BACKBONES)' --backbones '' --train-backbones '' \
		--out runs/bench-loop
	$(BIN)/rlvision bench-speed --loop-backbones '' --out runs/bench-speed
	$(BIN)/rlvision compare --env ALE/Pong-v5 --backbones '$(SPEED_BACKBONES)' \
		--steps 3072 --logdir runs/bench-pong-speed --overwrite --no-progress
	$(BIN)/rlvision compare --env ALE/Pong-v5 --backbones mobilenetv4_nano_rl --threads 1 \
		--steps 3072 --logdir runs/bench-pong-1thread --overwrite --no-progress
	$(BIN)/rlvision compare --env ALE/Pong-v5 --steps 3072 --logdir runs/bench-graphedppo-cpu --overwrite \
		--backbones 'nature_cnn,nature_cnn[algo=graphedppo],mobilenetv4_nano_rl,mobilenetv4_nano_rl[algo=graphedppo]' \
		--no-progress
	$(BIN)/python experiments/bench_running_bn.py
	# the norm-choice table: make bench-learning (issue 12, 3 seeds with CIs)

# Issue 31: MobileNet-v4 presets designed on this device (about 20 minutes on 2 cores): candidates' loop cost
# against a learning proxy, the Pareto front (runs/design-cpu/design.md, pareto-56.png). On a GPU: --device cuda.
bench-design: $(STAMP)
	$(BIN)/rlvision design --out runs/design-cpu
	$(BIN)/rlvision design --references nature_cnn --out runs/design-cpu-2 \
		--blocks "cn_c24_k4_s4-er_c48_e2_s2 cn_c16_k4_s4-er_c32_e4_s2 cn_c24_k4_s4-er_c48_e4_s2"
	$(BIN)/rlvision design --references nature_cnn --norm frozen_bn --out runs/design-cpu-frozen \
		--blocks "cn_c16_k4_s4-er_c32_e2_s2 cn_c24_k4_s4-er_c48_e2_s2 cn_c32_k4_s4-er_c64_e2_s2"

# Issue 10/14 GPU figures (needs a CUDA machine; about 10 minutes, plus torch.compile's tuning if not skipped).
# SB3's PPO next to GraphedPPO (its update replayed from CUDA graphs; eager on CPU), the same encoders
GRAPHED_PPO := nature_cnn,nature_cnn[algo=graphedppo],mobilenetv4_nano_rl,mobilenetv4_nano_rl[algo=graphedppo],mnv4_conv_small,mnv4_conv_small[algo=graphedppo]
SMALL_BACKBONES := nature_cnn,impala_cnn,mobilenetv4_nano_rl,mobilenetv4_small_rl,mnv4_conv_small,rest_rl,cyclemlp_rl,conformer_rl
bench-gpu: $(STAMP)
	$(BIN)/rlvision bench-speed --device cuda --backbones $(SMALL_BACKBONES) --train-backbones '' \
		--rounds 100 --out runs/bench-gpu-rollout
	$(BIN)/rlvision bench-speed --device cuda --backbones '' \
		--train-backbones mobilenetv4_nano_rl,nature_cnn --no-compile --train-rounds 20 --out runs/bench-gpu-train
	$(BIN)/rlvision compare --device cuda --env ALE/Pong-v5 --steps 16384 \
		--backbones '$(GRAPHED_PPO)' --logdir runs/bench-gpu-ppo --overwrite --no-progress

# Issue 21, learning benchmark v2 (Ray Tune sweeps; about 4 hours on 2 cores): the default encoder before and after
# issue 21 next to nature_cnn and the other encoders on DoorKey-5x5 (80k steps), LavaGapS5 and the synthetic task,
# the norm choice, IMPALA on DoorKey, the DrQ-v2 check and SAC from pixels. Rerun to resume an interrupted sweep.
# On a GPU machine add SWEEP_ARGS='--gpu 0.25 --cpus 2'.
SWEEP_ARGS ?=
LEARNING_V2 := norms_v2 learning_v2_doorkey learning_v2_doorkey_running learning_v2_doorkey_lin learning_v2_doorkey_ln learning_v2_lavagap \
	learning_v2_synthetic learning_v2_lavagap_presets learning_v2_lavagap_impala learning_v2_doorkey_presets \
	learning_v2_impala drqv2 sac_pixels sac_pixels_sb3_entropy speed_validation
bench-learning: $(STAMP)
	for config in $(LEARNING_V2); do \
		$(BIN)/rlvision sweep --config experiments/configs/sweep_$$config.yaml --out runs/sweep-$$config $(SWEEP_ARGS) \
			|| exit 1; done

# Issue 22 (about 40 minutes on 2 cores): export of every small backbone (sizes, agreement, latency per runtime),
# onnxruntime rollouts (same actions, PPO FPS, the ceiling any rollout backend can reach), evaluate_policy on a file.
ORT_CACHE := RLVISION_CACHE_DIR=runs/ort-cache
bench-export: $(STAMP)
	$(BIN)/python experiments/bench_export.py
	$(BIN)/python experiments/check_ort_actions.py --steps 4096
	$(BIN)/python experiments/check_export_eval.py
	$(ORT_CACHE) $(BIN)/python experiments/ort_loop_split.py --rounds 6
	$(ORT_CACHE) $(BIN)/python experiments/ort_loop_split.py --rounds 6 --threads 2
	$(ORT_CACHE) $(BIN)/rlvision compare --env ALE/Pong-v5 --steps 32768 --threads 2 --no-progress --backbones \
		'mobilenetv4_nano_rl[rollout_backend=onnxruntime],mobilenetv4_nano_rl,mobilenetv4_nano_rl[rollout_backend=onnxruntime]'

clean:
	rm -rf $(VENV) runs *.egg-info .pytest_cache
