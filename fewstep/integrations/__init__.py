"""Thin adapters that put fewstep's samplers inside other tools (diffusers pipelines);
they translate, the math stays in fewstep's core."""
