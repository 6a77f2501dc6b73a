"""The connector protocol: pure Python (Pydantic), no Django, so that connector authors and the
on-premises agent can depend on it alone."""
