"""Plotly figure builders shared by the pages and the exports: data in, ``go.Figure`` out."""
