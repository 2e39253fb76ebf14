"""The Streamlit page of cape-track (`streamlit run streamlit_app/app.py`): UI over the tracker's public API."""
