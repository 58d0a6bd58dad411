import Shared
public enum TestPKIPlaceholder {}
