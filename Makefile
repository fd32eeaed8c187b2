# The two quick-start commands: `make demo` and `make test`. Both set up .venv on their own.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install demo demo-i2v demo-1.5 test lint format bench gpu-check clean

install: $(STAMP)

# CPU machines take the CPU build of torch (torch==2.13.0); machines with an NVIDIA driver take the regular build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(PIP) install -q "torch>=2.4"; \
	else \
		$(PIP) install -q "torch==2.13.0"; \
	fi
	$(PIP) install -q -e ".[dev]"
	touch $(STAMP)

test: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) results build *.egg-info

# The tiny random-weight model (no downloads) and one MP4 from it.
TINY := results/tiny-model
$(TINY)/.done: $(STAMP) hyvideo/tiny.py hyvideo/tiny_text.py
	$(PY) -m hyvideo.tiny $(TINY)
	touch $@

demo: $(TINY)/.done
	$(PY) sample_video.py --model-base $(TINY) --prompt "A cat walks on the grass, realistic style." \
		--video-size 128 128 --video-length 17 --infer-steps 8 --seed 42 --save-path results \
		--precision fp32 --vae-precision fp32 --text-encoder-precision fp32 --text-encoder-precision-2 fp32

# Image-to-video: a tiny random-weight HunyuanVideo-I2V model (LLaVA + CLIP-L, token_replace), a generated test
# image (a colour gradient with a disc), one MP4 that starts from it.
TINY_I2V := results/tiny-i2v-model
$(TINY_I2V)/.done: $(STAMP) hyvideo/tiny.py hyvideo/tiny_llava.py
	$(PY) -m hyvideo.tiny $(TINY_I2V) --task i2v
	$(PY) -c "import numpy as n; from PIL import Image; y, x = n.mgrid[0:96, 0:160]; \
		a = n.stack([x * 255 // 159, y * 255 // 95, 255 * ((x - 80) ** 2 + (y - 48) ** 2 < 900)], -1); \
		Image.fromarray(a.astype(n.uint8)).save('$(TINY_I2V)/first_frame.png')"
	touch $@

demo-i2v: $(TINY_I2V)/.done
	$(PY) sample_video.py --model-base $(TINY_I2V) --i2v-mode --i2v-image-path $(TINY_I2V)/first_frame.png \
		--prompt "A ball rolls across a colourful wall." --video-size 96 160 --video-length 17 --infer-steps 8 \
		--seed 42 --save-path results \
		--precision fp32 --vae-precision fp32 --text-encoder-precision fp32 --text-encoder-precision-2 fp32

# HunyuanVideo 1.5: a tiny random-weight 480p image-to-video model (official ckpts/ layout: Qwen2.5-VL, byT5 with
# its glyph vocabulary, SigLIP, the 1.5 DiT and VAE), run with generate.py's own option names; then text-to-video
# from a tiny 480p_t2v tree.
TINY_15 := results/tiny-1.5-model
$(TINY_15)/.done: $(STAMP) hyvideo/tiny.py hyvideo/tiny_qwen.py
	$(PY) -m hyvideo.tiny $(TINY_15)/i2v --family 1.5 --task i2v
	$(PY) -m hyvideo.tiny $(TINY_15)/t2v --family 1.5
	$(PY) -c "import numpy as n; from PIL import Image; y, x = n.mgrid[0:96, 0:160]; \
		a = n.stack([x * 255 // 159, y * 255 // 95, 255 * ((x - 80) ** 2 + (y - 48) ** 2 < 900)], -1); \
		Image.fromarray(a.astype(n.uint8)).save('$(TINY_15)/first_frame.png')"
	touch $@

demo-1.5: $(TINY_15)/.done
	$(PY) sample_video.py --model-base $(TINY_15)/i2v --image_path $(TINY_15)/first_frame.png \
		--prompt 'A ball rolls past a sign that reads "HELLO".' --video-size 96 160 --video_length 17 \
		--num_inference_steps 8 --seed 42 --output_path results/demo-1.5-i2v.mp4 --dtype fp32 \
		--text-encoder-precision fp32 --vae-precision fp32
	$(PY) sample_video.py --model-base $(TINY_15)/t2v --prompt 'A neon sign that says "OPEN".' \
		--video-size 96 160 --video_length 17 --num_inference_steps 8 --seed 42 \
		--save-path results --dtype fp32 --text-encoder-precision fp32 --vae-precision fp32

# every v1 benchmark, then HunyuanVideo 1.5 against diffusers' 1.5 pipelines (benchmarks/bench_hv15.py)
bench: install
	$(PY) -m benchmarks
	$(PY) -m benchmarks bench_hv15

# Every GPU path once on random mid-size weights (no downloads), one table; exit 1 on a crash or mismatch.
# Without CUDA it says so and exits 0.
gpu-check: install
	$(PY) -m benchmarks.gpu_check; v1=$$?; $(PY) -m benchmarks.gpu_check --family 1.5 && exit $$v1
