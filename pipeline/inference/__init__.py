"""Inference services: previews now; bundle loading, batch runner and report later."""
