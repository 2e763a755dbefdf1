"""The HTTP face: the Flask app and its routes (`app`), client authentication (`auth`), the
settings read from the environment (`config`), JSON log lines (`logs`), the utilization dashboard
(`dashboard`), and the rows each answered hook hands the utilization record (`recording`).
"""
