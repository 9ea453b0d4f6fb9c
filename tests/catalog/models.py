"""Every concrete built-in field type, relations of each kind, and custom field subclasses."""

import uuid

from django.db import models
from django.db.models import F


class LowerCaseCharField(models.CharField):
    """A custom field: maps through its nearest built-in ancestor, CharField."""

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        return value.lower() if isinstance(value, str) else value


class Tag(models.Model):
    id = models.SmallAutoField(primary_key=True)
    name = models.SlugField(unique=True)


class Author(models.Model):
    id = models.AutoField(primary_key=True)
    name = models.CharField(max_length=100, help_text="Full name,\n as printed.")


class Profile(models.Model):
    author = models.OneToOneField(Author, primary_key=True, on_delete=models.CASCADE)
    bio = models.TextField(blank=True)


class Token(models.Model):
    key = models.UUIDField(primary_key=True, default=uuid.uuid4)
    label = models.CharField(max_length=20)


class Book(models.Model):
    title = models.CharField(max_length=200)
    author = models.ForeignKey(Author, on_delete=models.CASCADE, related_name="books")
    isbn = models.CharField(max_length=13, unique=True)


class Everything(models.Model):
    f_int = models.IntegerField()
    f_bigint = models.BigIntegerField()
    f_smallint = models.SmallIntegerField()
    f_posint = models.PositiveIntegerField()
    f_possmall = models.PositiveSmallIntegerField()
    f_posbig = models.PositiveBigIntegerField()
    f_float = models.FloatField()
    f_decimal = models.DecimalField(max_digits=30, decimal_places=10)
    f_bool = models.BooleanField()
    f_char = models.CharField(max_length=100)
    f_text = models.TextField()
    f_slug = models.SlugField()
    f_email = models.EmailField()
    f_url = models.URLField()
    f_uuid = models.UUIDField()
    f_ip = models.GenericIPAddressField()
    f_filepath = models.FilePathField(path="/tmp")
    f_file = models.FileField(upload_to="files/")
    f_image = models.ImageField(upload_to="images/")
    f_date = models.DateField()
    f_datetime = models.DateTimeField()
    f_time = models.TimeField()
    f_duration = models.DurationField()
    f_binary = models.BinaryField()
    f_json = models.JSONField()
    f_choice_int = models.IntegerField(choices=[(1, "one"), (2, "two")])
    f_choice_str = models.CharField(max_length=5, choices=[("a", "A"), ("b", "B")])
    f_custom = LowerCaseCharField(max_length=50)
    f_null_int = models.IntegerField(null=True)
    f_null_char = models.CharField(max_length=10, null=True)
    f_null_decimal = models.DecimalField(max_digits=10, decimal_places=2, null=True)
    f_null_bool = models.BooleanField(null=True)
    f_null_datetime = models.DateTimeField(null=True)
    f_null_date = models.DateField(null=True)
    f_null_json = models.JSONField(null=True)
    f_default_int = models.IntegerField(default=7)
    f_blank_char = models.CharField(max_length=10, blank=True)
    f_auto_now = models.DateTimeField(auto_now=True)
    author = models.ForeignKey(Author, on_delete=models.PROTECT)
    editor = models.ForeignKey(Author, null=True, on_delete=models.SET_NULL, related_name="+")
    token = models.OneToOneField(Token, null=True, on_delete=models.SET_NULL)
    tags = models.ManyToManyField(Tag, blank=True)

    if hasattr(models, "GeneratedField"):  # Django 5.0+
        f_generated = models.GeneratedField(
            expression=F("f_int") + 1, output_field=models.BigIntegerField(), db_persist=True
        )
